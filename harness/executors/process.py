"""The cell process itself: ``python -m harness.cell.process``, started, streamed, stopped.

Every executor runs a cell the same way, through :func:`run`: the same command (this
interpreter, ``-m harness.cell.process``, the run folder and the job's arguments), output
line by line into the cell's log, ``@@bench`` progress events handed to a callback, the
last lines kept for the failure message. What differs between executors is only the
environment it adds (``BENCH_PLACEMENT`` and thread or device settings) and where the
run folder is (the driver's, or a temporary one on a Dask worker).

The child dies with its parent: it is given ``BENCH_PARENT_PID`` and sets
``PR_SET_PDEATHSIG`` itself (first thing in :mod:`harness.cell.process`), so no orphaned
cell runs on and writes into a folder a resumed run is completing. A :class:`ProcessSet`
stops every running cell at once (signals).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from harness import fsio
from harness.cell.process import AFFINITY_ENV, EVENT_PREFIX, PARENT_ENV, PLACEMENT_ENV

__all__ = ["AFFINITY_ENV", "PLACEMENT_ENV", "ProcessEnd", "ProcessSet", "command", "run"]

TAIL_LINES = 20
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class ProcessEnd:
    """How one cell process ended. ``stopped``: we stopped it (a signal, a cancellation)."""

    returncode: int
    tail: tuple[str, ...]
    start_seconds: float | None
    process_seconds: float
    log_error: str
    stopped: bool


class ProcessSet:
    """The running cell processes of this process, so a signal can stop them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[str]] = set()
        self.stopping = False

    def add(self, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self._procs.add(proc)
            if self.stopping:  # started as the run was being stopped
                _terminate(proc)

    def discard(self, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self._procs.discard(proc)

    def stop_all(self) -> None:
        """SIGTERM every running cell, a few seconds' grace, then SIGKILL the rest."""
        with self._lock:
            self.stopping = True
            procs = list(self._procs)
        for proc in procs:
            _terminate(proc)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _terminate(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()


def command(run_dir: Path, args: tuple[str, ...] | list[str]) -> list[str]:
    """The cell process's command line (``--spawned-at`` is added at spawn)."""
    return [sys.executable, "-m", "harness.cell.process", "--run-dir", str(run_dir), *args]


def run(
    args: tuple[str, ...] | list[str],
    *,
    run_dir: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    unset: Iterable[str] = (),
    on_event: Callable[[dict[str, Any]], None] | None = None,
    procs: ProcessSet | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ProcessEnd:
    """Run one cell process to its end, its output into ``log_path``.

    ``env``: variables added to this process's environment, after ``unset`` are taken out
    of it (a Dask worker's thread settings, replaced by the run's). ``should_stop``: polled every
    half second; when it returns True the process is stopped (a cancelled Dask task).
    A signal in the calling thread stops the process before it propagates."""
    with fsio.guard(log_path.parent, "create the log folder"):
        log_path.parent.mkdir(parents=True, exist_ok=True)
    with fsio.guard(log_path, "write"):
        log = open(log_path, "w", buffering=1)  # noqa: SIM115 (closed below, in finally)
    dropped = set(unset)
    inherited = {k: v for k, v in os.environ.items() if k not in dropped}
    envp = {**inherited, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid()), **(env or {})}
    cmd = [*command(run_dir, args), "--spawned-at", repr(time.time())]
    t0 = time.perf_counter()
    state = _Stream(log, log_path, on_event)
    proc = None
    watcher = None
    stopped = threading.Event()
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=envp,
            cwd=os.getcwd(),
        )  # fmt: skip
        if procs is not None:
            procs.add(proc)
        if should_stop is not None:
            watcher = threading.Thread(
                target=_watch, args=(proc, should_stop, stopped), daemon=True
            )
            watcher.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            state.line(line)
        rc = proc.wait()
    finally:  # also on SIGINT/SIGTERM in this thread: the cell's process must not run on
        if proc is not None:
            _stop(proc)
            if procs is not None:
                procs.discard(proc)
        with contextlib.suppress(OSError):
            log.close()
    was_stopped = stopped.is_set() or (procs is not None and procs.stopping)
    return ProcessEnd(
        rc, tuple(state.tail), state.start_seconds, time.perf_counter() - t0, state.log_error,
        was_stopped,
    )  # fmt: skip


class _Stream:
    """Consumes the cell's output: log, progress events, the tail for error messages."""

    def __init__(
        self, log: TextIO, log_path: Path, on_event: Callable[[dict[str, Any]], None] | None
    ) -> None:
        self.log, self.log_path, self.on_event = log, log_path, on_event
        self.tail: list[str] = []
        self.start_seconds: float | None = None
        self.log_error = ""  # why the log stopped (e.g. the disk filled up); the cell goes on

    def line(self, line: str) -> None:
        if not self.log_error:
            try:
                self.log.write(line)
            except OSError as exc:
                self.log_error = fsio.fs_error(exc, self.log_path, "write").message
        if line.startswith(EVENT_PREFIX):
            try:
                ev = json.loads(line[len(EVENT_PREFIX) :])
            except ValueError:
                return
            if ev.get("event") == "ready":
                self.start_seconds = ev.get("start_seconds")
            if self.on_event is not None:
                self.on_event(ev)
        else:
            self.tail = [*self.tail, line.rstrip()][-TAIL_LINES:]


def _watch(
    proc: subprocess.Popen[str], should_stop: Callable[[], bool], stopped: threading.Event
) -> None:
    while proc.poll() is None:
        if should_stop():
            stopped.set()
            _terminate(proc)
            return
        time.sleep(0.5)


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop a cell's process if it still runs: SIGTERM, a few seconds' grace, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        with contextlib.suppress(OSError):
            proc.stdout.close()
