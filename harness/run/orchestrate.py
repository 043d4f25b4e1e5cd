"""A matrix run: the run folder, one process per cell, resume, failures recorded.

``reports/runs/<run-id>/run.json`` (:class:`~harness.results.RunInfo`) is written when the
run starts and again, with ``finished_at``, when it ends; each cell's process
(``python -m harness.cell.process``) writes ``cells/<cell-file>.json`` and its output goes to
``logs/<cell-file>.log``. A cell that fails, crashes or is killed (e.g. out of memory) is
recorded as ``failed`` with its error, and the run goes on. Every name in the run folder,
and every record read or written there, is :mod:`harness.runfolder`'s.

Where the cell processes run is the executor's business (:mod:`harness.executors`:
serial, ``--jobs``/``--devices`` on this machine, a Dask cluster; ``--shard i/n`` picks a
stable 1/n of the cells); everything here — the run folder, resume, failure records,
progress — is the same under each. A remote executor ships a cell's result, log and
TensorBoard files back, and they are written here, atomically, as each cell finishes.

Repeats (``repeats = N`` on a cell): each repeat is its own cell process (a job of its
own, under any executor) and writes ``repeats/<cell-file>/r<k>.json`` (log
``logs/<cell-file>.r<k>.log``; TensorBoard events from repeat 1 only). Once all N are in,
``cells/<cell-file>.json`` is written: the full result of the median repeat (by train
images/s) with ``extra.repeats`` holding every repeat's medians and their median, IQR and
CV (:func:`harness.stats.throughput_repeats`). On ``--resume`` a cell counts as done when
its ``cells/`` file is; otherwise its repeats with an ok file are kept and only the rest
run again. A failed repeat fails the cell, naming the repeat.

``--resume`` reuses the run folder and skips every cell whose result file exists with
status ``ok`` or ``skipped`` and passes validation, its cell id matching its file name (its
file is not touched); failed, unreadable and misnamed cells run again.

A run id names a run folder of ours or a new one: an existing folder without ``run.json``
(``--runs-dir reports --run-id baselines``) and the names the harness gives its own
folders (:data:`harness.runfolder.RESERVED_RUN_IDS`) are refused before anything is
written (:func:`harness.runfolder.check_ours`).

Faults: one process writes to a run folder at a time (:mod:`harness.run.lock`; a second
writer is refused naming the holder's pid). SIGINT/SIGTERM stop every running cell's
process (terminate, then kill; on Dask, the tasks are cancelled and each worker stops its
cell), record nothing for them and end in :class:`~harness.errors.RunStopped` (130/143),
which the CLI turns into the exact ``--resume`` command. A cell whose result
cannot be written (full disk) is recorded as failed with the reason; when even that cannot
be written, the run stops with RunStopped (exit 2). Files are written atomically, so an
interrupted or refused write leaves the earlier file as it was.

:func:`run_matrix` is the API the CLI (and the lead's baseline gate) calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import env, paths, results, runfolder
from harness.backend import BACKENDS
from harness.errors import (
    EXIT_BAD_INPUT,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    FileSystemError,
    InputError,
    RunStopped,
    Terminated,
)
from harness.executors.base import Executor
from harness.matrix import CellSpec, Matrix
from harness.run import lock
from harness.run.progress import RunProgress
from harness.run.record import CellOutcome, Recorder
from harness.run.shard import Shard


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
    executor: Executor | None = None,
    shard: Shard | None = None,
    recording: dict[str, Any] | None = None,
) -> RunOutcome:
    """Run ``cells`` (default: all of ``matrix``), each in its own process, into a run folder.

    ``recording`` (``bench baseline record``): the repeats and noise-seed cells added to
    calibrate a baseline (:meth:`harness.matrix.Matrix.for_baseline`), kept in run.json.

    ``executor`` decides where the cell processes run (default: serially, here);
    ``shard`` keeps a stable 1/n of the cells. The executor is opened first (a cluster
    that does not answer is an input error before anything is written), then the
    pre-flight (:mod:`harness.run.preflight`) checks every cell still to run and prepares
    their data once, here; on a problem nothing starts and no run folder is created,
    unless ``skip_unavailable`` records those cells as skipped.
    """
    t0 = time.perf_counter()
    backend = check_backend(backend)
    chosen = select_backend(cells if cells is not None else matrix.cells, backend)
    if shard is not None:
        chosen = shard.select(chosen)
    runs_dir = Path(runs_dir) if runs_dir else paths.runs_dir()
    if run_id is None and resume:
        latest = runfolder.latest(runs_dir, matrix.profile)
        if latest is None:
            raise InputError(
                f"--resume: no run of profile {matrix.profile!r} in {runs_dir}; "
                "give --run-id ID or start a run without --resume"
            )
        run_id = latest.name
    run_id = runfolder.check_run_id(run_id or runfolder.default_run_id(matrix.profile))
    run_dir = runs_dir / run_id
    runfolder.check_ours(run_dir)
    done = runfolder.finished_cells(run_dir, [c.cell_id for c in chosen]) if resume else set()
    from harness.executors.serial import SerialExecutor
    from harness.run import preflight

    ex = executor or SerialExecutor()
    ex.open()
    try:
        pre = preflight.run(
            [c for c in chosen if c.cell_id not in done],
            backend=backend,
            dry_run=dry_run,
            allow_unpinned=allow_unpinned,
            skip_unavailable=skip_unavailable,
        )
        with lock.hold(run_dir), _stops_resumably(run_id, run_dir):
            return _run_started(
                matrix, chosen, run_dir, run_id, pre, done, t0, resume=resume, backend=backend,
                dry_run=dry_run, allow_unpinned=allow_unpinned, progress=progress,
                executor=ex, shard=shard, recording=recording,
            )  # fmt: skip
    finally:
        ex.close()


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
    executor: Executor,
    shard: Shard | None,
    recording: dict[str, Any] | None = None,
) -> RunOutcome:
    """The run once the pre-flight passed, with the run folder's lock held."""
    info = _start_run(
        matrix, chosen, run_dir, resume=resume, backend=backend, dry_run=dry_run,
        executor=executor, shard=shard, recording=recording,
    )  # fmt: skip

    todo: list[CellSpec] = []
    outcomes: list[CellOutcome] = []
    for cell in chosen:
        if cell.cell_id in done:
            outcomes.append(CellOutcome(cell.cell_id, "resumed", None, None, None))
        elif cell.cell_id in pre.skipped:
            outcomes.append(_record_skipped(cell, run_dir, pre.skipped[cell.cell_id], backend))
        else:
            todo.append(cell)
    recorder = Recorder(run_dir, backend=backend)
    jobs = [
        job
        for cell in todo
        for job in recorder.jobs_for(cell, dry_run=dry_run, allow_unpinned=allow_unpinned)
    ]

    own_progress = progress is None
    prog = progress or RunProgress(len(outcomes) + len(jobs), done=len(outcomes))
    recorder.prog = prog
    with prog if own_progress else contextlib.nullcontext(prog):
        for o in outcomes:
            prog.cell_skipped(o.cell_id, o.error or "already done (resume)")
        recorder.combine_ready()  # repeats all in from an earlier invocation
        if jobs:
            executor.run(jobs, run_dir, recorder)
    outcomes += recorder.outcomes.values()
    order = {c.cell_id: i for i, c in enumerate(chosen)}
    outcomes.sort(key=lambda o: order[o.cell_id])
    runfolder.write_run(
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


def _record_skipped(cell: CellSpec, run_dir: Path, reason: str, backend: str | None) -> CellOutcome:
    """A cell the pre-flight set aside (``skip_if_unsupported``, ``--skip-unavailable``)."""
    res = runfolder.failed_result(
        cell, reason, wall_seconds=0.0, backend_name=cell.backend or backend or "unknown",
        status="skipped",
    )  # fmt: skip
    runfolder.write_cell(run_dir, res)
    return CellOutcome(cell.cell_id, "skipped", reason, None, None)


def _start_run(
    matrix: Matrix,
    chosen: tuple[CellSpec, ...],
    run_dir: Path,
    *,
    resume: bool,
    backend: str | None,
    dry_run: bool,
    executor: Executor,
    shard: Shard | None,
    recording: dict[str, Any] | None = None,
) -> results.RunInfo:
    from harness.manifest import load_manifest

    resolved = {**matrix.to_dict(), "dry_run": dry_run}
    if shard is not None:
        resolved["shard"] = str(shard)
    if recording is not None:
        resolved["baseline_recording"] = recording
    if runfolder.is_run(run_dir):
        if not resume:
            raise InputError(
                f"run folder {run_dir} already exists: pass --resume to complete it, or "
                "choose another --run-id"
            )
        old = runfolder.read_run(run_dir)
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
        if old.matrix.get("baseline_recording") != resolved.get("baseline_recording"):
            raise InputError(
                f"--resume: {run_dir} was "
                f"{'' if old.matrix.get('baseline_recording') else 'not '}started by "
                "`bench baseline record`; resume it with the same command"
            )
        if old.matrix.get("shard") != resolved.get("shard"):
            raise InputError(
                f"--resume: {run_dir} is shard {old.matrix.get('shard') or 'none'}, this run "
                f"asks for shard {resolved.get('shard') or 'none'}; resume with the same --shard"
            )
        ids = tuple(dict.fromkeys((*old.cell_ids, *(c.cell_id for c in chosen))))
        environment = {**old.environment, "executor": executor.describe()}
        info = dataclasses.replace(old, cell_ids=ids, finished_at=None, environment=environment)
    else:
        manifest = load_manifest()
        fp = {**env.fingerprint(backend), "executor": executor.describe()}
        info = results.RunInfo(
            run_id=run_dir.name,
            profile=matrix.profile,
            matrix=resolved,
            environment=fp,
            manifest_digest=manifest.digest,
            git_commit=fp.get("git_commit"),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            cell_ids=tuple(c.cell_id for c in chosen),
            tolerances=matrix.tolerances.recorded(),
        )
    runfolder.write_run(run_dir, info)
    return info


def _write_process_log(run_dir: Path, outcomes: list[CellOutcome]) -> None:
    """``processes.json``: per-cell process wall and start cost of the latest invocation."""
    runfolder.write_processes(
        run_dir,
        [
            {
                "cell_id": o.cell_id,
                "status": o.status,
                "process_seconds": o.process_seconds,
                "start_seconds": o.start_seconds,
            }
            for o in outcomes
        ],
    )
