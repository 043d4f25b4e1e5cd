"""Versioned JSON on disk: atomic writes and schema-checked reads.

Every JSON file the harness writes carries ``"schema": N`` and ``"kind"``, and is
written to a temporary file in the same folder, fsynced, then ``os.replace``-d, so a
reader never sees half a file. Reading refuses another kind or schema version.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from harness.errors import InputError, SchemaError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The file gets the ordinary permissions (0666 less the umask), not ``mkstemp``'s 0600,
    so results written in a container stay readable by the host user and vice versa.
    """
    path = Path(path)
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


def read_json(path: Path, *, kind: str, schema: int) -> dict[str, Any]:
    """Read a JSON object, refusing a missing file, bad JSON, another kind or schema."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    got_kind = obj.get("kind")
    if got_kind != kind:
        raise SchemaError(f"{path}: expected a {kind!r} file, got kind={got_kind!r}")
    got_schema = obj.get("schema")
    if got_schema != schema:
        raise SchemaError(
            f"{path}: schema {got_schema!r} is not supported (this harness reads {kind} "
            f"schema {schema}); regenerate the file with this version of the harness"
        )
    return obj
