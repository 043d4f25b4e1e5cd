"""The executor interface: where a cell's process runs, never what it computes.

The orchestrator (:mod:`harness.run.orchestrate`) turns each cell still to run into a
:class:`CellJob` (the arguments of ``python -m harness.cell.process`` and where its result and
log go in the run folder) and hands the jobs to an :class:`Executor`. The executor runs
each job's cell process somewhere and reports back through :class:`Hooks`, from any
thread: ``started`` (where it runs), ``event`` (its progress lines), ``ended``
(:class:`CellEnd`: how the process ended, and, from a remote machine, its result, log
and TensorBoard files to be written into the driver's run folder). What the run folder
holds, resume, failure isolation and the progress display are the orchestrator's, so
they are the same under every executor.

A signal (SIGINT/SIGTERM, raised in the main thread) stops every running cell, reports
none of them as ended, and propagates.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.matrix import CellSpec


@dataclass(frozen=True)
class CellJob:
    """One cell process to run: a cell, or one repeat of a cell with ``repeats > 1``."""

    key: str  # unique in the run: the cell id, or "<cell id>#r<k>" for repeat k
    cell: CellSpec
    args: tuple[str, ...]  # python -m harness.cell.process ARGS (no --run-dir, --spawned-at)
    result_rel: str  # where the cell process writes its result, relative to the run folder
    log_rel: str  # where its output goes, relative to the run folder
    epochs: int  # for the progress display
    repeat: int | None = None  # k of "repeat k of n", None for a cell without repeats
    repeats: int = 1

    @property
    def label(self) -> str:
        """The cell id, with ``(repeat k/n)`` for a repeat: what progress lines show."""
        if self.repeat is None:
            return self.cell.cell_id
        return f"{self.cell.cell_id} (repeat {self.repeat}/{self.repeats})"


@dataclass(frozen=True)
class CellEnd:
    """How a job's cell process ended, as the executor saw it.

    ``lost`` says why the executor could not get the process to an end of its own (a Dask
    worker lost twice, a task that failed on the worker); then ``returncode`` is None.
    ``result``/``log``/``files`` are shipped back by remote executors (None/empty when
    the process wrote into the run folder itself)."""

    returncode: int | None
    tail: tuple[str, ...] = ()  # its last lines of output (not progress events)
    start_seconds: float | None = None  # spawn until Keras and its backend were imported
    process_seconds: float | None = None  # spawn to exit
    log_error: str = ""  # why the log stopped being written (e.g. a full disk)
    lost: str | None = None
    result: dict[str, Any] | None = None
    log: bytes | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # relative path -> bytes
    placement: dict[str, Any] = field(default_factory=dict)  # where it ran, per attempt


class Hooks(Protocol):
    """What an executor reports to the orchestrator (called from any thread)."""

    def started(self, job: CellJob, where: str) -> None: ...

    def event(self, job: CellJob, event: dict[str, Any]) -> None: ...

    def ended(self, job: CellJob, end: CellEnd) -> None: ...


class Executor(abc.ABC):
    """Runs cell jobs; see the module doc. ``open`` may refuse (InputError, exit 2) before
    anything is written; ``run`` blocks until every job has ended or a signal stops it."""

    name: str = "executor"

    def open(self) -> None:  # noqa: B027 (optional hook: most executors need nothing)
        """Connect or check what the executor needs; called before the pre-flight."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release what :meth:`open` took (connections); always called."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """The executor's record for the run's fingerprint (``environment.executor``)."""

    @abc.abstractmethod
    def run(self, jobs: list[CellJob], run_dir: Any, hooks: Hooks) -> None:
        """Run every job, reporting through ``hooks``; stop them all on a signal."""
