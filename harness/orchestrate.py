"""A matrix run: the run folder, one subprocess per cell, resume, failures recorded.

``reports/runs/<run-id>/run.json`` (:class:`~harness.results.RunInfo`) is written when the
run starts and again, with ``finished_at``, when it ends; each cell writes
``cells/<cell-file>.json`` from its own process (``python -m harness.cellproc``) and its
output goes to ``logs/<cell-file>.log``. A cell that fails, crashes or is killed (e.g. out
of memory) is recorded as ``failed`` with its error, and the run goes on.

``--resume`` reuses the run folder and skips every cell whose result file exists with
status ``ok`` or ``skipped`` and passes validation (its file is not touched); failed and
unreadable cells run again.

Faults: one process writes to a run folder at a time (:mod:`harness.runlock`; a second
writer is refused naming the holder's pid). SIGINT/SIGTERM stop the running cell's process
(terminate, then kill), record nothing for it and end in :class:`~harness.errors.RunStopped`
(130/143), which the CLI turns into the exact ``--resume`` command. A cell whose result
cannot be written (full disk) is recorded as failed with the reason; when even that cannot
be written, the run stops with RunStopped (exit 2). Files are written atomically, so an
interrupted or refused write leaves the earlier file as it was.

:func:`run_matrix` is the API the CLI (and the lead's baseline gate) calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import env, fsio, paths, results, runlock
from harness.backend import BACKENDS
from harness.cellproc import EVENT_PREFIX
from harness.errors import (
    EXIT_BAD_INPUT,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    FileSystemError,
    InputError,
    RunStopped,
    Terminated,
)
from harness.matrix import CellSpec, Matrix
from harness.progress import RunProgress

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # whole string (fullmatch): no "x\n"


@dataclass(frozen=True)
class CellOutcome:
    cell_id: str
    status: str  # "ok", "failed", "skipped" or "resumed" (already done, not run again)
    error: str | None
    process_seconds: float | None  # spawn to exit of its process; None when not run
    start_seconds: float | None  # spawn until Keras and its backend were imported


@dataclass(frozen=True)
class RunOutcome:
    """What :func:`run_matrix` did: where, and which cells failed."""

    run_dir: Path
    run_id: str
    cells: tuple[CellOutcome, ...]
    wall_seconds: float

    @property
    def failed_cells(self) -> tuple[str, ...]:
        return tuple(c.cell_id for c in self.cells if c.status == "failed")

    @property
    def ok(self) -> bool:
        return not self.failed_cells


def default_run_id(profile: str) -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{profile}"


def latest_run_dir(runs_dir: Path, profile: str) -> Path | None:
    """The newest run folder of ``profile`` (by run id) with a run.json, or None."""
    found = sorted(p.parent for p in runs_dir.glob(f"*-{profile}/run.json"))
    return found[-1] if found else None


def check_backend(name: str | None) -> str | None:
    if name is None:
        return None
    if name not in BACKENDS:
        raise InputError(f"--backend {name!r}: expected one of {list(BACKENDS)}")
    from harness.backend import installed

    if not installed(name):
        raise InputError(f"--backend {name!r}: the {name} package is not installed in {sys.prefix}")
    return name


def select_backend(cells: tuple[CellSpec, ...], backend: str | None) -> tuple[CellSpec, ...]:
    """``--backend B``: cells that name no backend run on B, and of the cells of a
    ``backends`` axis only B's run (an error when that leaves none)."""
    if backend is None:
        return cells
    kept = tuple(c for c in cells if c.backend in (None, backend))
    if not kept:
        named = sorted({str(c.backend) for c in cells})
        raise InputError(
            f"--backend {backend!r}: none of the {len(cells)} selected cells runs on it "
            f"(their backends: {', '.join(named)}); drop --backend or pick one of those"
        )
    return kept


def run_matrix(
    matrix: Matrix,
    *,
    cells: tuple[CellSpec, ...] | None = None,
    resume: bool = False,
    run_id: str | None = None,
    runs_dir: Path | None = None,
    backend: str | None = None,
    dry_run: bool = False,
    allow_unpinned: bool = False,
    progress: RunProgress | None = None,
    skip_unavailable: bool = False,
) -> RunOutcome:
    """Run ``cells`` (default: all of ``matrix``), each in its own process, into a run folder.

    The pre-flight (:mod:`harness.preflight`) runs first: it checks every cell still to
    run and prepares their data once, here; on a problem nothing starts and no run folder
    is created, unless ``skip_unavailable`` records those cells as skipped.
    """
    t0 = time.perf_counter()
    backend = check_backend(backend)
    chosen = select_backend(cells if cells is not None else matrix.cells, backend)
    runs_dir = Path(runs_dir) if runs_dir else paths.runs_dir()
    if run_id is None and resume:
        latest = latest_run_dir(runs_dir, matrix.profile)
        if latest is None:
            raise InputError(
                f"--resume: no run of profile {matrix.profile!r} in {runs_dir}; "
                "give --run-id ID or start a run without --resume"
            )
        run_id = latest.name
    run_id = run_id or default_run_id(matrix.profile)
    if not _RUN_ID.fullmatch(run_id):
        raise InputError(f"--run-id {run_id!r}: use letters, digits, '.', '_' and '-' only")
    run_dir = runs_dir / run_id
    done = _finished_cells(run_dir, chosen) if resume else set()
    from harness import preflight

    pre = preflight.run(
        [c for c in chosen if c.cell_id not in done],
        backend=backend,
        dry_run=dry_run,
        allow_unpinned=allow_unpinned,
        skip_unavailable=skip_unavailable,
    )
    with runlock.hold(run_dir), _stops_resumably(run_id, run_dir):
        return _run_started(
            matrix, chosen, run_dir, run_id, pre, done, t0, resume=resume, backend=backend,
            dry_run=dry_run, allow_unpinned=allow_unpinned, progress=progress,
        )  # fmt: skip


def _run_started(
    matrix: Matrix,
    chosen: tuple[CellSpec, ...],
    run_dir: Path,
    run_id: str,
    pre: Any,
    done: set[str],
    t0: float,
    *,
    resume: bool,
    backend: str | None,
    dry_run: bool,
    allow_unpinned: bool,
    progress: RunProgress | None,
) -> RunOutcome:
    """The run once the pre-flight passed, with the run folder's lock held."""
    info = _start_run(matrix, chosen, run_dir, resume=resume, backend=backend, dry_run=dry_run)

    todo: list[CellSpec] = []
    outcomes: list[CellOutcome] = []
    for cell in chosen:
        if cell.cell_id in done:
            outcomes.append(CellOutcome(cell.cell_id, "resumed", None, None, None))
        elif cell.cell_id in pre.skipped:
            outcomes.append(_record_skipped(cell, run_dir, pre.skipped[cell.cell_id], backend))
        else:
            todo.append(cell)

    own_progress = progress is None
    prog = progress or RunProgress(len(chosen), done=len(outcomes))
    with prog if own_progress else contextlib.nullcontext(prog):
        for o in outcomes:
            prog.cell_skipped(o.cell_id, o.error or "already done (resume)")
        for cell in todo:
            outcomes.append(
                _run_one(
                    cell,
                    run_dir,
                    prog,
                    backend=backend,
                    dry_run=dry_run,
                    allow_unpinned=allow_unpinned,
                )
            )
    order = {c.cell_id: i for i, c in enumerate(chosen)}
    outcomes.sort(key=lambda o: order[o.cell_id])
    results.write_run(
        run_dir,
        dataclasses.replace(info, finished_at=datetime.now(UTC).isoformat(timespec="seconds")),
    )
    _write_process_log(run_dir, outcomes)
    return RunOutcome(run_dir, run_id, tuple(outcomes), time.perf_counter() - t0)


@contextlib.contextmanager
def _stops_resumably(run_id: str, run_dir: Path) -> Iterator[None]:
    """A signal or a run folder that refuses writes, as :class:`RunStopped` (resumable)."""
    kept = f"finished cells are kept in {run_dir}, the cell that was running is not recorded"
    try:
        yield
    except KeyboardInterrupt:
        raise RunStopped(
            f"interrupted (SIGINT): run {run_id} stopped; {kept}",
            run_id=run_id, run_dir=str(run_dir), exit_code=EXIT_SIGINT,
        ) from None  # fmt: skip
    except Terminated:
        raise RunStopped(
            f"terminated (SIGTERM): run {run_id} stopped; {kept}",
            run_id=run_id, run_dir=str(run_dir), exit_code=EXIT_SIGTERM,
        ) from None  # fmt: skip
    except FileSystemError as exc:
        raise RunStopped(
            f"{exc.message}; run {run_id} stopped (earlier results are unchanged)",
            run_id=run_id, run_dir=str(run_dir), exit_code=EXIT_BAD_INPUT,
        ) from exc  # fmt: skip


def _finished_cells(run_dir: Path, chosen: tuple[CellSpec, ...]) -> set[str]:
    """Cells of a resumed run whose result is there with status ok or skipped (not rerun)."""
    done = set()
    for cell in chosen:
        existing = run_dir / "cells" / results.cell_filename(cell.cell_id)
        if existing.is_file():
            try:
                status = results.read_cell(existing).status
            except InputError:
                status = "unreadable"
            if status in ("ok", "skipped"):
                done.add(cell.cell_id)
    return done


def _record_skipped(cell: CellSpec, run_dir: Path, reason: str, backend: str | None) -> CellOutcome:
    """A cell the pre-flight set aside (``skip_if_unsupported``, ``--skip-unavailable``)."""
    from harness.runner import failed_result

    res = failed_result(
        cell, reason, wall_seconds=0.0, backend_name=cell.backend or backend or "unknown",
        status="skipped",
    )  # fmt: skip
    results.write_cell(run_dir, res)
    return CellOutcome(cell.cell_id, "skipped", reason, None, None)


def _start_run(
    matrix: Matrix,
    chosen: tuple[CellSpec, ...],
    run_dir: Path,
    *,
    resume: bool,
    backend: str | None,
    dry_run: bool,
) -> results.RunInfo:
    from harness.manifest import load_manifest

    resolved = {**matrix.to_dict(), "dry_run": dry_run}
    if (run_dir / "run.json").is_file():
        if not resume:
            raise InputError(
                f"run folder {run_dir} already exists: pass --resume to complete it, or "
                "choose another --run-id"
            )
        old = results.read_run(run_dir)
        if old.profile != matrix.profile or old.matrix.get("dry_run", False) != dry_run:
            raise InputError(
                f"--resume: {run_dir} is a run of profile {old.profile!r}"
                f"{' (dry run)' if old.matrix.get('dry_run') else ''}, not {matrix.profile!r}"
                f"{' (dry run)' if dry_run else ''}"
            )
        if old.matrix.get("cells") != resolved["cells"]:
            raise InputError(
                f"--resume: the matrix of profile {matrix.profile!r} ({matrix.path}) changed "
                f"since {run_dir} started; start a new run"
            )
        ids = tuple(dict.fromkeys((*old.cell_ids, *(c.cell_id for c in chosen))))
        info = dataclasses.replace(old, cell_ids=ids, finished_at=None)
    else:
        manifest = load_manifest()
        fp = env.fingerprint(backend)
        info = results.RunInfo(
            run_id=run_dir.name,
            profile=matrix.profile,
            matrix=resolved,
            environment=fp,
            manifest_digest=manifest.digest,
            git_commit=fp.get("git_commit"),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            cell_ids=tuple(c.cell_id for c in chosen),
            tolerances={
                "accuracy_points": matrix.tolerances.accuracy_points,
                "throughput_relative": matrix.tolerances.throughput_relative,
            },
        )
    results.write_run(run_dir, info)
    return info


def _run_one(
    cell: CellSpec,
    run_dir: Path,
    prog: RunProgress,
    *,
    backend: str | None,
    dry_run: bool,
    allow_unpinned: bool,
) -> CellOutcome:
    """Run one cell in a child process; record a failure if it dies without a result."""
    result_path = run_dir / "cells" / results.cell_filename(cell.cell_id)
    log_path = run_dir / "logs" / (results.cell_filename(cell.cell_id)[: -len(".json")] + ".log")
    with fsio.guard(log_path.parent, "create the log folder"):
        log_path.parent.mkdir(parents=True, exist_ok=True)
    with fsio.guard(result_path, "remove the failed result"):
        result_path.unlink(missing_ok=True)  # a failed result being retried
    if dry_run:  # a dry run runs one short epoch per stage
        from harness.strategies import plan

        epochs = len(plan(cell).stages)
    else:
        epochs = cell.epochs
    prog.cell_start(cell.cell_id, epochs)
    cmd = [
        sys.executable, "-m", "harness.cellproc",
        "--cell-json", json.dumps(cell.to_dict()),
        "--run-dir", str(run_dir),
        "--spawned-at", repr(time.time()),
    ]  # fmt: skip
    backend = cell.backend or backend  # the cell's own (a backends axis), else the run's
    if backend:
        cmd += ["--backend", backend]
    if dry_run:
        cmd.append("--dry-run")
    if allow_unpinned:
        cmd.append("--allow-unpinned")
    t0 = time.perf_counter()
    start_seconds = None
    tail: list[str] = []
    envp = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_error = ""  # why the log stopped (e.g. the disk filled up); the cell goes on
    with fsio.guard(log_path, "write"):
        log = open(log_path, "w", buffering=1)  # noqa: SIM115 (closed below, in finally)
    proc = None
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=envp,
            cwd=os.getcwd(), preexec_fn=_die_with_parent,
        )  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            if not log_error:
                try:
                    log.write(line)
                except OSError as exc:
                    log_error = fsio.fs_error(exc, log_path, "write").message
            if line.startswith(EVENT_PREFIX):
                try:
                    ev = json.loads(line[len(EVENT_PREFIX) :])
                except ValueError:
                    continue
                if ev.get("event") == "epoch":
                    prog.epoch(ev)
                elif ev.get("event") == "ready":
                    start_seconds = ev.get("start_seconds")
            else:
                tail = ([*tail, line.rstrip()])[-20:]
        rc = proc.wait()
    finally:  # also on SIGINT/SIGTERM: the cell's process must not run on
        if proc is not None:
            _stop(proc)
        with contextlib.suppress(OSError):
            log.close()
    secs = time.perf_counter() - t0
    unreadable = ""
    if result_path.is_file():
        try:
            res = results.read_cell(result_path)
        except InputError as exc:  # a result that does not validate is no result
            unreadable = exc.message
        else:
            prog.cell_end(cell.cell_id, res.status, res.error)
            return CellOutcome(cell.cell_id, res.status, res.error, secs, start_seconds)
    # The process died before writing a result: crash, signal, out-of-memory kill.
    if unreadable:
        why = f"the cell's result does not validate: {unreadable}"
    elif rc < 0:
        why = f"cell process killed by signal {-rc}"
        if -rc == 9:
            why += " (SIGKILL: out of memory?)"
    else:
        why = f"cell process exited with status {rc} without a result"
    last = next((t for t in reversed(tail) if t.strip()), "")
    error = f"{why}; last output: {last[:300]}" if last else why
    error += f" (log: {log_path}{'; ' + log_error if log_error else ''})"
    from harness.runner import failed_result

    res = failed_result(cell, error, wall_seconds=secs, backend_name=backend or "unknown")
    results.write_cell(run_dir, res)
    prog.cell_end(cell.cell_id, "failed", error)
    return CellOutcome(cell.cell_id, "failed", error, secs, start_seconds)


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop a cell's process if it still runs: SIGTERM, a few seconds' grace, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        with contextlib.suppress(OSError):
            proc.stdout.close()


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the orchestrator dies (Linux), so no orphan cell runs on
    and writes a result into a folder that a resumed run is completing."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


PROCESS_KIND = "transfer-bench.processes"
PROCESS_SCHEMA = 1


def _write_process_log(run_dir: Path, outcomes: list[CellOutcome]) -> None:
    """``processes.json``: per-cell process wall and start cost of the latest invocation."""
    from harness import jsonio

    jsonio.write_json(
        run_dir / "processes.json",
        {
            "cells": [
                {
                    "cell_id": o.cell_id,
                    "status": o.status,
                    "process_seconds": o.process_seconds,
                    "start_seconds": o.start_seconds,
                }
                for o in outcomes
            ]
        },
        kind=PROCESS_KIND,
        schema=PROCESS_SCHEMA,
    )
