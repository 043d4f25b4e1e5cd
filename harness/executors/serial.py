"""The default executor: one cell after another, in this process's main thread.

Today's path, unchanged: each cell's process inherits this environment as it is (no
thread or device settings added), so a serial cell owns the whole machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.executors import process
from harness.executors.base import CellEnd, CellJob, Executor, Hooks


class SerialExecutor(Executor):
    name = "serial"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "concurrent_cells": 1, "throughput_shared": False}

    def run(self, jobs: list[CellJob], run_dir: Any, hooks: Hooks) -> None:
        run_dir = Path(run_dir)
        placed = json.dumps({"executor": self.name, "shared": False})
        for job in jobs:
            hooks.started(job, "")
            end = process.run(
                job.args,
                run_dir=run_dir,
                log_path=run_dir / job.log_rel,
                env={process.PLACEMENT_ENV: placed},
                on_event=lambda ev, job=job: hooks.event(job, ev),  # type: ignore[misc]
            )
            hooks.ended(job, ended(end))


def ended(end: process.ProcessEnd, **more: Any) -> CellEnd:
    """A :class:`CellEnd` from a local process's end."""
    return CellEnd(
        returncode=end.returncode,
        tail=end.tail,
        start_seconds=end.start_seconds,
        process_seconds=end.process_seconds,
        log_error=end.log_error,
        **more,
    )
