"""The history index: an SQLite database over the run folders (runs, cells, metrics, environments).

The run folders (``reports/runs/<run>/run.json`` + ``cells/*.json``, read through
:mod:`harness.runfolder`) are the source of truth; the database is a cache of them and can be
deleted at any time. :func:`update_index` brings it up to date:

* **Incremental**: a run is re-read only when its files changed. Its *signature* is the
  sha256 of the name, size and mtime of ``run.json`` and every ``cells/*.json``; a run whose
  signature is stored is left alone, a folder that disappeared is dropped.
* **Corrupt or foreign runs are skipped with one line naming them** (no run.json, bad JSON,
  another kind or schema, a cell file that does not parse): the line names the file and why,
  and is repeated on every update until the folder is fixed or removed. A bad cell file
  skips that cell only; a bad ``run.json`` skips the run.
* **Atomic**: every change of one update is one transaction, so a reader sees the index
  before or after an update, never half of one. An index of another schema is rebuilt from
  the run folders (and says so); so is anything at the default path
  (``<runs-dir>/.history.sqlite``, a name that is ours). A file named with ``--db`` that is
  not an index of this harness (:func:`index_problem`: its ``meta`` table names
  :data:`INDEX_KIND`) is refused, never replaced (:mod:`harness.outputs`).

Environment fingerprints are stored once per distinct fingerprint (``environments``, keyed by
the sha256 of its canonical JSON). Every run also records its **series key**: the hardware
identity (:func:`harness.env.hardware_identity`) and the lock digest, which split the trends
so that different machines or dependency sets are never one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import env as env_mod
from harness import fsio, outputs, runfolder
from harness.errors import InputError
from harness.results import CellResult, RunInfo

INDEX_SCHEMA = 1
INDEX_KIND = outputs.HISTORY_INDEX_KIND  # in the meta table, from the first index on
DB_NAME = ".history.sqlite"

_DDL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE environments (digest TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE runs (
    folder TEXT PRIMARY KEY,            -- the run folder's name under the runs dir
    run_id TEXT NOT NULL,
    signature TEXT NOT NULL,            -- sha256 over (name, size, mtime) of its JSON files
    profile TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    git_commit TEXT,
    manifest_digest TEXT,
    dry_run INTEGER NOT NULL,
    hardware_id TEXT NOT NULL,          -- sha256[:12] of the hardware identity
    hardware_label TEXT NOT NULL,
    hardware_json TEXT NOT NULL,
    lock_digest TEXT,                   -- uv.lock sha256; NULL for runs that predate it
    environment TEXT NOT NULL REFERENCES environments(digest),
    indexed_at TEXT NOT NULL
);
CREATE TABLE cells (
    folder TEXT NOT NULL REFERENCES runs(folder) ON DELETE CASCADE,
    cell_id TEXT NOT NULL,
    dataset TEXT NOT NULL,
    strategy TEXT NOT NULL,
    precision TEXT NOT NULL,
    seed INTEGER NOT NULL,
    backend TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    config_json TEXT NOT NULL,
    PRIMARY KEY (folder, cell_id)
);
CREATE TABLE metrics (
    folder TEXT NOT NULL,
    cell_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (folder, cell_id, metric),
    FOREIGN KEY (folder, cell_id) REFERENCES cells(folder, cell_id) ON DELETE CASCADE
);
CREATE TABLE skipped (
    path TEXT PRIMARY KEY,              -- the file or folder that could not be read
    folder TEXT NOT NULL,
    signature TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX runs_profile ON runs(profile, started_at);
CREATE INDEX metrics_metric ON metrics(metric, cell_id);
"""

# Metric name -> how it is read from a cell result (ok cells only; None values are not stored).
METRIC_READERS: dict[str, Any] = {
    "best_val_accuracy": lambda c: c.best_val_accuracy,
    "final_val_accuracy": lambda c: c.final_val_accuracy,
    "test_accuracy": lambda c: c.test_accuracy,
    "train_images_per_s": lambda c: c.train_throughput and c.train_throughput.images_per_s,
    "inference_images_per_s": lambda c: (
        c.inference_throughput and c.inference_throughput.images_per_s
    ),
    "peak_memory_mib": lambda c: (
        None if c.peak_memory_bytes is None else c.peak_memory_bytes / 2**20
    ),
    "wall_seconds": lambda c: c.wall_seconds,
}


@dataclass(frozen=True)
class Skip:
    """A file or folder the index could not use, and why (one line)."""

    path: str
    reason: str

    def line(self) -> str:
        return f"skipped {self.path}: {self.reason}"


@dataclass(frozen=True)
class IndexUpdate:
    """What one :func:`update_index` did."""

    db_path: Path
    added: tuple[str, ...]
    updated: tuple[str, ...]
    unchanged: tuple[str, ...]
    removed: tuple[str, ...]
    skipped: tuple[Skip, ...]
    rebuilt: str | None = None  # why the database was rebuilt from scratch, if it was

    def summary(self) -> str:
        runs = len(self.added) + len(self.updated) + len(self.unchanged)
        return (
            f"history: {runs} runs indexed ({len(self.added)} new, {len(self.updated)} changed, "
            f"{len(self.unchanged)} unchanged, {len(self.removed)} removed, "
            f"{len(self.skipped)} skipped) in {self.db_path}"
        )

    def lines(self) -> list[str]:
        """The summary, the rebuild reason if any, and one line per skipped file."""
        out = [self.summary()]
        if self.rebuilt:
            out.append(f"history: rebuilt the index: {self.rebuilt}")
        out += [f"history: {s.line()}" for s in self.skipped]
        return out


def default_db_path(runs_dir: Path) -> Path:
    """Where the index of ``runs_dir`` lives by default: ``<runs_dir>/.history.sqlite``."""
    return Path(runs_dir) / DB_NAME


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


def hardware_label(identity: dict[str, Any]) -> str:
    """A short name for a hardware identity: ``AMD EPYC 7B13 x2 · tensorflow 2.21.0``."""
    cpu = f"{identity.get('cpu.model') or 'unknown CPU'} x{identity.get('cpu.count') or '?'}"
    parts = [cpu]
    if identity.get("gpu.name"):
        parts.append(f"{identity['gpu.count'] or 1}x {identity['gpu.name']}")
    be = identity.get("backend") or "unknown backend"
    version = identity.get(be) if isinstance(be, str) else None
    parts.append(f"{be} {version}" if version else be)
    return " · ".join(parts)


def lock_digest(environment: dict[str, Any]) -> str | None:
    """The uv.lock digest of a fingerprint, or None (older runs did not record it)."""
    lock = environment.get("lock")
    value = lock.get("digest") if isinstance(lock, dict) else None
    return value if isinstance(value, str) and value else None


def _files(run_dir: Path) -> list[Path]:
    cells = run_dir / runfolder.CELLS
    found = sorted(cells.glob("*.json")) if cells.is_dir() else []
    return [run_dir / runfolder.RUN_JSON, *found]


def signature(run_dir: Path) -> str:
    """sha256 over (relative name, size, mtime_ns) of run.json and every cell file."""
    h = hashlib.sha256()
    for path in _files(run_dir):
        try:
            st = path.stat()
        except OSError:
            h.update(f"{path.name}:missing;".encode())
            continue
        h.update(f"{path.relative_to(run_dir)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class _Parsed:
    folder: str
    signature: str
    info: RunInfo
    cells: tuple[CellResult, ...]
    skipped: tuple[Skip, ...]


def _parse(run_dir: Path, sig: str) -> _Parsed | Skip:
    try:
        info = runfolder.read_run(run_dir)
    except InputError as exc:  # includes SchemaError: another kind or schema version
        where = run_dir / runfolder.RUN_JSON
        return Skip(str(where), _reason(exc.message, where))
    cells: list[CellResult] = []
    skipped: list[Skip] = []
    for path in _files(run_dir)[1:]:
        try:
            cells.append(runfolder.read_cell(path))
        except InputError as exc:
            skipped.append(Skip(str(path), _reason(exc.message, path)))
    return _Parsed(run_dir.name, sig, info, tuple(cells), tuple(skipped))


def _reason(message: str, path: Path) -> str:
    """The error without the path it starts with (the skip line names the path already)."""
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _open(db_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _schema_problem(conn: sqlite3.Connection) -> str | None:
    """None when the database is an index of this schema, else what is wrong with it."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.DatabaseError as exc:
        return f"not an index of this harness ({exc})"
    if row is None or row[0] != str(INDEX_SCHEMA):
        return f"index schema {row and row[0]!r} is not {INDEX_SCHEMA}"
    return None


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _create(db_path: Path) -> sqlite3.Connection:
    """A new, empty index at ``db_path``: written beside it, then linked into place only if
    no other process put one there first (two runs ending at once into one runs folder:
    replacing the index under the other's open connection broke its journal, "disk I/O
    error"); the loser opens the winner's."""
    tmp = db_path.with_name(f".{db_path.name}.{os.getpid()}.new")
    tmp.unlink(missing_ok=True)
    conn = _open(tmp)
    try:  # a private file until it is linked: no transaction needed
        conn.executescript(_DDL)
        conn.execute(
            "INSERT INTO meta VALUES ('kind', ?), ('schema', ?), ('created_at', ?)",
            (INDEX_KIND, str(INDEX_SCHEMA), _now()),
        )
    except BaseException:
        conn.close()
        tmp.unlink(missing_ok=True)
        raise
    conn.close()
    try:
        os.link(tmp, db_path)
    except FileExistsError:
        pass  # another process created it first: use that one
    except OSError:  # a file system without hard links: replace, as before
        os.replace(tmp, db_path)
    finally:
        tmp.unlink(missing_ok=True)
    return _open(db_path)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def index_problem(path: Path) -> str | None:
    """None when ``path`` is a history index of this harness (of any schema), else why not
    (:data:`harness.outputs.HISTORY_INDEX` recognises it: its ``meta`` table names
    :data:`INDEX_KIND`, or, written before the kind was recorded, our tables)."""
    return outputs.HISTORY_INDEX.recognise(Path(path))


def open_index(db_path: Path, *, owned: bool = False) -> tuple[sqlite3.Connection, str | None]:
    """Open (or create) the index; returns the connection and why it was rebuilt, if it was.

    An index of another schema is rebuilt; so is anything else when ``owned`` (the default
    path, whose name is ours). Otherwise a file that is not an index is refused.
    """
    db_path = Path(db_path)
    if not owned:  # a path the user named: never replaced unless it is an index
        outputs.claim(db_path, outputs.HISTORY_INDEX, option="--db")
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"history index {db_path}: cannot create its folder: {exc}") from None
    rebuilt = None
    try:
        if db_path.is_file() and db_path.stat().st_size > 0:
            conn = _open(db_path)
            problem = _schema_problem(conn)
            if problem is None:
                return conn, None
            conn.close()
            rebuilt = f"{db_path}: {problem}"
            db_path.unlink(missing_ok=True)
        elif db_path.is_file():  # empty: nothing in it (ours, or claimed above)
            db_path.unlink(missing_ok=True)
        return _create(db_path), rebuilt
    except (sqlite3.Error, OSError) as exc:
        raise InputError(
            f"history index {db_path}: cannot write it ({exc}); pass a writable --db PATH"
        ) from None


def run_folders(runs_dir: Path) -> list[Path]:
    """Every folder directly under ``runs_dir`` (hidden ones excluded), sorted by name."""
    return sorted(p for p in Path(runs_dir).iterdir() if p.is_dir() and not p.name.startswith("."))


def update_index(
    runs_dir: Path, db_path: Path | None = None, *, rebuild: bool = False
) -> IndexUpdate:
    """Bring the index of ``runs_dir`` up to date (see the module docstring)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise InputError(f"runs folder {runs_dir}: no such folder; pass --runs-dir DIR")
    default = default_db_path(runs_dir)
    db_path = Path(db_path) if db_path is not None else default
    owned = db_path.resolve() == default.resolve()
    if not owned:
        outputs.claim(db_path, outputs.HISTORY_INDEX, option="--db")  # before --rebuild
    if rebuild and db_path.exists():
        with fsio.guard(db_path, "remove"):
            db_path.unlink()
    conn, rebuilt = open_index(db_path, owned=owned)
    try:
        return _update(conn, runs_dir, db_path, rebuilt)
    except sqlite3.Error as exc:
        raise InputError(
            f"history index {db_path}: {exc}; delete it to rebuild from the run folders"
        ) from None
    finally:
        conn.close()


def _update(
    conn: sqlite3.Connection, runs_dir: Path, db_path: Path, rebuilt: str | None
) -> IndexUpdate:
    stored = dict(conn.execute("SELECT folder, signature FROM runs"))
    stored_skips: dict[str, tuple[str, list[Skip]]] = {}
    for path, folder, sig, reason in conn.execute(
        "SELECT path, folder, signature, reason FROM skipped ORDER BY path"
    ):
        stored_skips.setdefault(folder, (sig, []))[1].append(Skip(path, reason))

    added: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    skipped: list[Skip] = []
    to_write: list[_Parsed] = []
    to_skip: list[tuple[str, str, Skip]] = []  # (folder, signature, skip) of unusable runs
    seen: set[str] = set()
    for run_dir in run_folders(runs_dir):
        folder = run_dir.name
        seen.add(folder)
        sig = signature(run_dir)
        old_sig, old_skips = stored_skips.get(folder, (None, []))
        if stored.get(folder) == sig:  # indexed and unchanged (maybe with skipped cells)
            unchanged.append(folder)
            skipped += old_skips if old_sig == sig else []
            continue
        if folder not in stored and old_sig == sig:  # still unusable, unchanged
            skipped += old_skips
            continue
        if not runfolder.is_run(run_dir):
            skip = Skip(str(run_dir), "no run.json (not a run folder, or a run that never started)")
            to_skip.append((folder, sig, skip))
            skipped.append(skip)
            continue
        parsed = _parse(run_dir, sig)
        if isinstance(parsed, Skip):
            to_skip.append((folder, sig, parsed))
            skipped.append(parsed)
            continue
        (updated if folder in stored else added).append(folder)
        skipped += parsed.skipped
        to_write.append(parsed)
    removed = sorted((set(stored) | set(stored_skips)) - seen)
    gone_runs = [f for f in removed if f in stored]
    # Runs that were indexed and are now unreadable leave the index too.
    gone_runs += [f for f, _, _ in to_skip if f in stored]

    with _transaction(conn):
        for folder in removed:
            conn.execute("DELETE FROM skipped WHERE folder = ?", (folder,))
        for folder in gone_runs:
            conn.execute("DELETE FROM runs WHERE folder = ?", (folder,))
        for folder, sig, skip in to_skip:
            conn.execute("DELETE FROM skipped WHERE folder = ?", (folder,))
            conn.execute(
                "INSERT INTO skipped VALUES (?, ?, ?, ?)", (skip.path, folder, sig, skip.reason)
            )
        for parsed in to_write:
            _write_run(conn, parsed)
        conn.execute("DELETE FROM environments WHERE digest NOT IN (SELECT environment FROM runs)")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('updated_at', ?)", (_now(),))
    return IndexUpdate(
        db_path=db_path,
        added=tuple(added),
        updated=tuple(updated),
        unchanged=tuple(unchanged),
        removed=tuple(f for f in removed if f in stored),
        skipped=tuple(skipped),
        rebuilt=rebuilt,
    )


def _write_run(conn: sqlite3.Connection, p: _Parsed) -> None:
    info = p.info
    fp = info.environment if isinstance(info.environment, dict) else {}
    identity = env_mod.hardware_identity(fp)
    env_digest = digest(fp)
    conn.execute("DELETE FROM runs WHERE folder = ?", (p.folder,))
    conn.execute("DELETE FROM skipped WHERE folder = ?", (p.folder,))
    conn.execute("INSERT OR IGNORE INTO environments VALUES (?, ?)", (env_digest, canonical(fp)))
    conn.execute(
        "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            p.folder,
            info.run_id,
            p.signature,
            info.profile,
            info.started_at,
            info.finished_at,
            info.git_commit,
            info.manifest_digest,
            int(bool(info.matrix.get("dry_run", False))),
            digest(identity)[:12],
            hardware_label(identity),
            canonical(identity),
            lock_digest(fp),
            env_digest,
            _now(),
        ),
    )
    for skip in p.skipped:
        conn.execute(
            "INSERT INTO skipped VALUES (?, ?, ?, ?)",
            (skip.path, p.folder, p.signature, skip.reason),
        )
    for c in p.cells:
        conn.execute(
            "INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                p.folder,
                c.cell_id,
                c.dataset,
                c.strategy,
                c.precision,
                c.seed,
                c.backend,
                c.status,
                c.error,
                canonical(c.config),
            ),
        )
        if not c.ok:
            continue
        for name, read in METRIC_READERS.items():
            value = read(c)
            if value is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?)",
                    (p.folder, c.cell_id, name, float(value)),
                )


def connect(db_path: Path) -> sqlite3.Connection:
    """A read connection to an existing index (queries: :mod:`harness.history.trends`)."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise InputError(f"history index {db_path}: no such file; run `bench history` first")
    conn = _open(db_path)
    problem = _schema_problem(conn)
    if problem:
        conn.close()
        raise InputError(f"history index {db_path}: {problem}; run `bench history --rebuild`")
    return conn
