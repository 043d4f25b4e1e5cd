"""The orchestrator's side of an executor: jobs out, results into the run folder.

:class:`Recorder` turns a cell into its jobs (one, or one per repeat) and is the
:class:`~harness.executors.base.Hooks` every executor reports to. Whatever ran the cell,
what lands in the run folder is decided here, the same way: a result shipped back from
another machine is validated and written atomically (with its log and TensorBoard
files); a process that ended without a valid result, or a cell the executor lost, is
recorded as ``failed`` with the reason; the progress display hears of each start,
epoch and end. Hooks may be called from several threads at once, so each holds a lock.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import fsio, jsonio, results, runfolder
from harness.errors import InputError
from harness.executors.base import CellEnd, CellJob
from harness.matrix import CellSpec
from harness.results import CellResult
from harness.run.progress import RunProgress
from harness.run.repeats import combine


@dataclass(frozen=True)
class CellOutcome:
    cell_id: str
    status: str  # "ok", "failed", "skipped" or "resumed" (already done, not run again)
    error: str | None
    process_seconds: float | None  # spawn to exit of its process; None when not run
    start_seconds: float | None  # spawn until Keras and its backend were imported


class Recorder:
    """Builds a run's jobs and records what the executor reports (see the module doc)."""

    def __init__(self, run_dir: Path, *, backend: str | None) -> None:
        self.run_dir = Path(run_dir)
        self.backend = backend
        self.prog: RunProgress | None = None
        self.outcomes: dict[str, CellOutcome] = {}
        self._lock = threading.Lock()
        self._cells: dict[str, CellSpec] = {}
        self._repeats: dict[str, dict[int, CellResult]] = {}  # cell id -> repeat k -> result
        self._seconds: dict[str, list[tuple[float | None, float | None]]] = {}
        self._shown: dict[str, str] = {}  # job key -> what progress lines call it

    # --- jobs -----------------------------------------------------------------------------

    def jobs_for(self, cell: CellSpec, *, dry_run: bool, allow_unpinned: bool) -> list[CellJob]:
        """The cell's jobs: one, or one per repeat not already done (``--resume``). Removes
        the failed results being retried, so a stale one is never read back."""
        args = ["--cell-json", json.dumps(cell.to_dict())]
        backend = cell.backend or self.backend  # the cell's own (a backends axis), else the run's
        if backend:
            args += ["--backend", backend]
        if dry_run:
            args.append("--dry-run")
        if allow_unpinned:
            args.append("--allow-unpinned")
        epochs = self._epochs(cell, dry_run)
        cell_rel = runfolder.cell_rel(cell.cell_id)
        self._unlink(cell_rel)
        self._cells[cell.cell_id] = cell
        if cell.repeats == 1:
            log = runfolder.log_rel(cell.cell_id)
            return [CellJob(cell.cell_id, cell, tuple(args), cell_rel, log, epochs)]
        kept = self._repeats.setdefault(cell.cell_id, {})
        jobs = []
        for k in range(1, cell.repeats + 1):
            rel = runfolder.repeat_rel(cell.cell_id, k)
            previous = self._read_ok(rel)
            if previous is not None:
                kept[k] = previous
                continue
            self._unlink(rel)
            more = ["--result", rel, *(["--no-tensorboard"] if k > 1 else [])]
            log = runfolder.log_rel(cell.cell_id, k)
            key = f"{cell.cell_id}#r{k}"
            job = CellJob(key, cell, (*args, *more), rel, log, epochs, k, cell.repeats)
            jobs.append(job)
        return jobs

    @staticmethod
    def _epochs(cell: CellSpec, dry_run: bool) -> int:
        if dry_run:  # a dry run runs one short epoch per stage
            from harness.cell.strategies import plan

            return len(plan(cell).stages)
        return cell.epochs

    def _unlink(self, rel: str) -> None:
        path = self.run_dir / rel
        with fsio.guard(path, "remove the failed result"):
            path.unlink(missing_ok=True)

    def _read_ok(self, rel: str) -> CellResult | None:
        path = self.run_dir / rel
        if not path.is_file():
            return None
        try:
            res = runfolder.read_cell(path)
        except InputError:
            return None
        return res if res.status == "ok" else None

    def combine_ready(self) -> None:
        """Cells whose repeats all finished in an earlier invocation: combine them now."""
        for cell_id, kept in list(self._repeats.items()):
            if len(kept) == self._cells[cell_id].repeats and cell_id not in self.outcomes:
                with self._lock:
                    self._finish_repeats(self._cells[cell_id])

    # --- hooks ----------------------------------------------------------------------------

    def started(self, job: CellJob, where: str) -> None:
        with self._lock:
            shown = self._shown[job.key] = f"{job.label} on {where}" if where else job.label
            if self.prog is not None:
                self.prog.cell_start(shown, job.epochs)

    def event(self, job: CellJob, event: dict[str, Any]) -> None:
        if event.get("event") != "epoch":
            return
        with self._lock:
            if self.prog is not None:
                self.prog.epoch({**event, "cell": self._shown.get(job.key, job.label)})

    def ended(self, job: CellJob, end: CellEnd) -> None:
        with self._lock:
            res = self._record(job, end)
            self._seconds.setdefault(job.cell.cell_id, []).append(
                (end.process_seconds, end.start_seconds)
            )
            shown = self._shown.pop(job.key, job.label)
            if job.repeat is None:
                self._outcome(job.cell, res, shown)
            else:
                if self.prog is not None:
                    self.prog.cell_end(shown, res.status, res.error)
                kept = self._repeats.setdefault(job.cell.cell_id, {})
                kept[job.repeat] = res
                if len(kept) == job.repeats:
                    self._finish_repeats(job.cell)

    # --- recording ------------------------------------------------------------------------

    def _record(self, job: CellJob, end: CellEnd) -> CellResult:
        """Write what came back; the job's result as it now stands in the run folder."""
        result_path = self.run_dir / job.result_rel
        log_path = self.run_dir / job.log_rel
        if end.log is not None:
            _write_bytes(log_path, end.log)
        for rel, data in end.files.items():
            if _inside(rel):
                _write_bytes(self.run_dir / rel, data)
        unreadable = ""
        if end.lost is None and end.result is not None:
            where = f"{job.label}: result from the worker"
            try:
                shipped = results.parse_cell(end.result, where)
            except InputError as exc:
                unreadable = exc.message
            else:
                placed = {**shipped.extra.get("placement", {}), **end.placement}
                res = dataclasses.replace(shipped, extra={**shipped.extra, "placement": placed})
                runfolder.write_cell_file(result_path, res)
                return res
        if end.lost is None and not unreadable and result_path.is_file():
            try:
                return runfolder.read_cell(result_path)
            except InputError as exc:  # a result that does not validate is no result
                unreadable = exc.message
        error = self._why(end, unreadable, log_path)
        res = runfolder.failed_result(
            job.cell, error, wall_seconds=end.process_seconds or 0.0,
            backend_name=job.cell.backend or self.backend or "unknown",
            extra={"placement": dict(end.placement)} if end.placement else None,
        )  # fmt: skip
        runfolder.write_cell_file(result_path, res)
        return res

    @staticmethod
    def _why(end: CellEnd, unreadable: str, log_path: Path) -> str:
        """Why there is no result: the executor lost the cell, or its process died."""
        rc = end.returncode
        if end.lost is not None:
            why = end.lost
        elif unreadable:
            why = f"the cell's result does not validate: {unreadable}"
        elif rc is not None and rc < 0:
            why = f"cell process killed by signal {-rc}"
            if -rc == 9:
                why += " (SIGKILL: out of memory?)"
        else:
            why = f"cell process exited with status {rc} without a result"
        last = next((t for t in reversed(end.tail) if t.strip()), "")
        error = f"{why}; last output: {last[:300]}" if last else why
        return error + f" (log: {log_path}{'; ' + end.log_error if end.log_error else ''})"

    def _outcome(self, cell: CellSpec, res: CellResult, shown: str | None = None) -> None:
        secs = self._seconds.get(cell.cell_id, [])
        process = sum(s for s, _ in secs if s is not None) if secs else None
        start = next((s for _, s in secs if s is not None), None)
        outcome = CellOutcome(cell.cell_id, res.status, res.error, process, start)
        self.outcomes[cell.cell_id] = outcome
        if self.prog is not None and shown != "":
            self.prog.cell_end(shown or cell.cell_id, res.status, res.error)

    def _finish_repeats(self, cell: CellSpec) -> None:
        kept = self._repeats[cell.cell_id]
        res = combine([kept[k] for k in sorted(kept)])
        runfolder.write_cell(self.run_dir, res)
        self._outcome(cell, res, shown="")
        if self.prog is not None:  # its repeats were counted as they ended
            detail = f" — {res.error}" if res.error else ""
            self.prog.line(f"{cell.cell_id}: {res.status} over {cell.repeats} repeats{detail}")


def _inside(rel: str) -> bool:
    """Whether a shipped file's path stays inside the run folder (others are not written)."""
    parts = Path(rel).parts
    return bool(parts) and not Path(rel).is_absolute() and ".." not in parts


def _write_bytes(path: Path, data: bytes) -> None:
    with fsio.guard(path, "write"):
        path.parent.mkdir(parents=True, exist_ok=True)
        jsonio.atomic_write_bytes(path, data)
