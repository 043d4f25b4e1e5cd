"""Output paths a user names: never overwrite, or write into, what is not ours.

A path given as ``--db``, ``--out``, ``--record``, ``--mlflow`` / ``--tracking-uri`` may be
new (or an empty file or folder), or an earlier output of the same kind, recognised by its
content: a JSON file's ``kind``, an SQLite database's tables, a folder's marker file or
layout. Those are updated or replaced. Anything else — the manifest given as ``--db``, a
baseline given as ``--record``, a folder of photos given as ``--out`` — is refused before
anything is written: one line naming the option, the path, what it is, and what to do
(exit 2). A path that is not a regular file or folder (``/dev/null``, a FIFO) is refused
too: an atomic replace would put a file in its place.

Each kind of output is an :class:`Output` (its name, file or folder, and how an earlier
one is recognised); :func:`refusal` is the one check. Options take it as their argparse
``type`` (:func:`option`, :func:`mlflow_option`), so a bad path is refused while the
command line is read, before hours of work; library callers use :func:`claim`.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness import fsio
from harness.errors import InputError
from harness.runfolder import PLOTS, REPORT_NAME

SQLITE_HEADER = b"SQLite format 3\x00"
HDF5_HEADER = b"\x89HDF\r\n\x1a\n"
DASHBOARD_MARKER = ".transfer-bench-dashboard"
HISTORY_INDEX_KIND = "transfer-bench.history-index"  # harness.history.index's, in its meta
HISTORY_INDEX_TABLES = ("runs", "cells", "metrics")  # an index written before the kind was

Recogniser = Callable[[Path], "str | None"]  # None: ours; else why not, in a few words


@dataclass(frozen=True)
class Output:
    """A kind of output: what it is called, whether it is a folder, how to recognise one."""

    what: str  # "a history index of transfer-bench"
    folder: bool
    recognise: Recogniser


def refusal(path: str | Path, output: Output) -> str | None:
    """None when ``output`` may be written at ``path``, else why not (one clause).

    May be written: nothing there, an empty file or folder, or an earlier ``output``.
    A path that cannot be read is a :class:`~harness.errors.FileSystemError` (exit 2).
    """
    path = Path(path)
    if not os.path.lexists(path):
        return None
    with fsio.guard(path, "read"):
        if output.folder:
            if not path.is_dir():
                why = "it is a file, not a folder" if path.is_file() else "not a folder"
            elif not any(path.iterdir()):
                return None
            else:
                why = output.recognise(path)
        elif path.is_dir():
            why = "it is a folder"
        elif not path.is_file():
            why = "not a regular file"
        elif path.stat().st_size == 0:
            return None
        else:
            why = output.recognise(path)
    if why is None:
        return None
    new = "folder" if output.folder else "file"
    return (
        f"exists and is not {output.what} ({why}); it is left untouched: choose a new {new} "
        "or one that bench wrote, or move it away first"
    )


def claim(path: str | Path, output: Output, *, option: str) -> Path:
    """``path`` if ``output`` may be written there (see :func:`refusal`), else InputError
    naming ``option`` and the path."""
    problem = refusal(path, output)
    if problem:
        raise InputError(f"{option} {path}: {problem}")
    return Path(path)


def option(output: Output, flag: str) -> Callable[[str], Path]:
    """An argparse ``type`` for option ``flag`` that refuses a path where ``output`` may not
    be written. It raises InputError, which argparse lets through: the CLI prints it as
    one line and exits 2, as for any bad input."""

    def check(text: str) -> Path:
        return claim(text, output, option=flag)

    check.__name__ = output.what  # what argparse would call a value it cannot convert
    return check


# --- recognisers -------------------------------------------------------------------------


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def json_kind(kind: str) -> Recogniser:
    """A JSON object whose ``kind`` is ``kind`` (any schema: it is ours, in another version)."""

    def recognise(path: Path) -> str | None:
        try:
            data = json.loads(path.read_bytes())
        except (ValueError, RecursionError):
            return "not JSON"
        got = data.get("kind") if isinstance(data, dict) else None
        return None if got == kind else f"a JSON file of kind {got!r}, not {kind!r}"

    return recognise


def sqlite_tables(path: Path) -> set[str] | str:
    """The table names of the SQLite database ``path`` (opened read-only), or why it is none."""
    if _head(path, len(SQLITE_HEADER)) != SQLITE_HEADER:
        return "not an SQLite database"
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            return {str(r[0]) for r in rows}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"an SQLite database that cannot be read: {exc}"


def _tables(*required: str) -> Recogniser:
    def recognise(path: Path) -> str | None:
        tables = sqlite_tables(path)
        if isinstance(tables, str):
            return tables
        missing = sorted(set(required) - tables)
        return f"an SQLite database without the {', '.join(missing)} table(s)" if missing else None

    return recognise


def marker(name: str) -> Recogniser:
    """A folder that holds the marker file ``name``."""
    return lambda path: None if (path / name).is_file() else f"no {name} in it"


def _history_index(path: Path) -> str | None:
    """A history index of this harness (of any schema): an SQLite database whose ``meta``
    table says ``kind`` = :data:`HISTORY_INDEX_KIND`, or, written before the kind was
    recorded, one with a ``meta`` schema row and the index's tables."""
    tables = sqlite_tables(Path(path))
    if isinstance(tables, str):
        return tables
    if "meta" not in tables:
        return "an SQLite database without a meta table"
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
        try:
            meta = {str(k): v for k, v in conn.execute("SELECT key, value FROM meta")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"an SQLite database whose meta table cannot be read: {exc}"
    if meta.get("kind") == HISTORY_INDEX_KIND:
        return None
    if "kind" not in meta and "schema" in meta and set(HISTORY_INDEX_TABLES) <= tables:
        return None
    return f"an SQLite database of kind {meta.get('kind')!r}"


def _report_folder(path: Path) -> str | None:
    """What ``bench report`` writes: report.md (ours: its first line) and plots/*.png."""
    extra = sorted(p.name for p in path.iterdir() if p.name not in (REPORT_NAME, PLOTS))
    if extra:
        return f"it holds {extra[0]!r}, which bench report does not write"
    md = path / REPORT_NAME
    if md.exists() and not _head(md, 64).startswith(b"# transfer-bench report:"):
        return f"its {REPORT_NAME} was not written by bench report"
    plots = path / PLOTS
    if plots.exists():
        if not plots.is_dir():
            return "its plots is not a folder"
        other = sorted(p.name for p in plots.iterdir() if p.suffix != ".png" or not p.is_file())
        if other:
            return f"its plots/ holds {other[0]!r}, which bench report does not write"
    return None


def _mlflow_folder(path: Path) -> str | None:
    """A local MLflow folder: what ``bench export mlflow`` makes of one (``mlflow.db``, an
    MLflow SQLite store, and ``mlartifacts/``), or MLflow's older file store (``.trash/``,
    experiment folders holding ``meta.yaml``), which the exporter then refuses naming the
    migration command."""
    names = {p.name for p in path.iterdir()}
    if "mlflow.db" in names and names <= {"mlflow.db", "mlartifacts"}:
        return MLFLOW_DB.recognise(path / "mlflow.db")
    if (path / ".trash").is_dir() or any((p / "meta.yaml").is_file() for p in path.iterdir()):
        return None
    return "neither mlflow.db nor an MLflow file store (meta.yaml, .trash) in it"


def _weights(path: Path) -> str | None:
    return None if _head(path, len(HDF5_HEADER)) == HDF5_HEADER else "not an HDF5 file"


# --- the outputs -------------------------------------------------------------------------

HISTORY_INDEX = Output("a history index of transfer-bench", False, _history_index)
DASHBOARD = Output("a dashboard written by bench dashboard", True, marker(DASHBOARD_MARKER))
REPORT = Output("a report folder written by bench report", True, _report_folder)
AB_RECORD = Output("a bench ab record", False, json_kind("transfer-bench.ab"))
MLFLOW_DB = Output("an MLflow database", False, _tables("experiments", "alembic_version"))
MLFLOW_STORE = Output("an MLflow folder", True, _mlflow_folder)
WEIGHTS = Output("a Keras weights file", False, _weights)
BASELINE = Output("a baseline of transfer-bench", False, json_kind("transfer-bench.baseline"))
PRETRAIN_SIDECAR = Output("a bench pretrain sidecar", False, json_kind("transfer-bench.pretrain"))


def mlflow_target(uri: str) -> tuple[Path, Output] | None:
    """The local file or folder an MLflow tracking URI writes, or None (a server, ...)."""
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///") :].split("?", 1)[0]
        return (Path(rest), MLFLOW_DB) if rest and rest != ":memory:" else None
    if uri.startswith("file:"):
        rest = uri[len("file:") :]
        rest = "/" + rest.lstrip("/") if rest.startswith("//") else rest
        return (Path(rest), MLFLOW_STORE) if rest else None
    if "://" in uri or not uri:
        return None
    return Path(uri), MLFLOW_STORE


def check_mlflow_uri(uri: str, *, option: str) -> str:
    """``uri`` unless it names a local file or folder that is not an MLflow store."""
    target = mlflow_target(uri)
    if target is not None:
        problem = refusal(target[0], target[1])
        if problem:
            raise InputError(f"{option} {uri}: {target[0]} {problem}")
    return uri


def mlflow_option(flag: str) -> Callable[[str], str]:
    """An argparse ``type`` for an MLflow tracking URI option (see :func:`check_mlflow_uri`)."""

    def check(text: str) -> str:
        return check_mlflow_uri(text, option=flag)

    check.__name__ = "MLflow tracking URI"
    return check
