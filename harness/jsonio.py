"""Versioned JSON on disk: atomic writes and schema-checked reads.

Every JSON file the harness writes carries ``"schema": N`` and ``"kind"``, and is
written to a temporary file in the same folder, fsynced, then ``os.replace``-d, so a
reader never sees half a file. Reading refuses another kind, a newer schema, and what is
not JSON as the standard defines it (``NaN``, ``Infinity``); an older schema is upgraded
in memory, step by step, when its :class:`Record` has an upgrade for it, else refused.
Each kind of file is one :class:`Record` (kind, schema, upgrades), and its readers and
writers go through it, so that a schema bump adds one upgrade function in one place and
no reader is left refusing the files already written. A file
system that refuses the read or the write is one line naming the path (:mod:`harness.fsio`),
and a failed write leaves the old file as it was and no temporary file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import fsio
from harness.errors import InputError, SchemaError

# schema N -> a function turning a schema-N object into a schema-(N+1) one
Upgrades = Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The file gets the ordinary permissions (0666 less the umask), not ``mkstemp``'s 0600,
    so results written in a container stay readable by the host user and vice versa.
    An ``OSError`` (full disk, read-only file system, a parent that is a regular file …)
    becomes a one-line :class:`~harness.errors.FileSystemError` naming ``path``.
    """
    path = Path(path)
    with fsio.guard(path, "write"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def dumps(obj: Any) -> str:
    """Canonical JSON text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(path: Path, obj: dict[str, Any], *, kind: str, schema: int) -> None:
    """Atomically write ``obj`` with its ``kind`` and ``schema`` stamped in."""
    stamped = {**obj, "kind": kind, "schema": schema}
    atomic_write_bytes(Path(path), dumps(stamped).encode())


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads(text: str, where: str | Path) -> Any:
    """Parse JSON text strictly (no ``NaN``/``Infinity``); InputError naming ``where``."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{where}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except ValueError as exc:  # NaN/Infinity, or an integer too long to convert
        raise InputError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise InputError(f"{where}: not valid JSON (nested too deeply)") from None


def read_json(
    path: Path, *, kind: str, schema: int, upgrades: Upgrades | None = None
) -> dict[str, Any]:
    """Read a JSON object, refusing a missing file, bad JSON, another kind or schema.

    ``upgrades`` maps an older schema N to the function that turns such an object into
    schema N+1: an older file is read and upgraded step by step in memory (the file is
    left as it is), a newer one is refused.
    """
    path = Path(path)
    obj = loads(fsio.read_text(path), path)
    return check_header(obj, path, kind=kind, schema=schema, upgrades=upgrades)


def check_header(
    obj: Any, path: str | Path, *, kind: str, schema: int, upgrades: Upgrades | None = None
) -> dict[str, Any]:
    """``obj`` if it is a JSON object of ``kind`` and ``schema`` (or an older schema that
    ``upgrades`` lifts to it); else an InputError."""
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    got_kind = obj.get("kind")
    if got_kind != kind:
        raise SchemaError(f"{path}: expected a {kind!r} file, got kind={_short(got_kind)}")
    got_schema = obj.get("schema")
    while upgrades and type(got_schema) is int and got_schema < schema and got_schema in upgrades:
        try:
            obj = {**upgrades[got_schema](obj), "kind": kind, "schema": got_schema + 1}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SchemaError(
                f"{path}: {kind} schema {got_schema} could not be upgraded to {got_schema + 1} "
                f"({type(exc).__name__}: {exc}); regenerate the file with this harness"
            ) from None
        got_schema = obj["schema"]
    if type(got_schema) is not int or got_schema != schema:
        raise SchemaError(
            f"{path}: schema {_short(got_schema)} is not supported (this harness reads {kind} "
            f"schema {schema}); regenerate the file with this version of the harness"
        )
    return obj


@dataclass(frozen=True)
class Record:
    """A kind of versioned JSON file: its ``kind``, the ``schema`` this harness writes, and
    the upgrades that lift each older schema N to N+1 (empty until the first bump)."""

    kind: str
    schema: int
    upgrades: Upgrades = field(default_factory=dict)

    def read(self, path: Path) -> dict[str, Any]:
        """The object in ``path``, upgraded to :attr:`schema` (see :func:`read_json`)."""
        return read_json(path, kind=self.kind, schema=self.schema, upgrades=self.upgrades)

    def check(self, obj: Any, where: str | Path) -> dict[str, Any]:
        """``obj`` (already parsed, e.g. shipped back by a worker), upgraded like a file."""
        return check_header(obj, where, kind=self.kind, schema=self.schema, upgrades=self.upgrades)

    def write(self, path: Path, obj: dict[str, Any]) -> None:
        """Atomically write ``obj`` stamped with this record's kind and schema."""
        write_json(path, obj, kind=self.kind, schema=self.schema)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
