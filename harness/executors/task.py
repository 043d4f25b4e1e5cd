"""What runs on a Dask worker: one cell's process, and its result shipped back.

:func:`run_cell` is the task :mod:`harness.executors.cluster` submits. On the worker it
runs the SAME command as every other executor (:func:`harness.executors.process.run`:
``python -m harness.cell.process`` with the job's arguments), with this worker's interpreter
and environment (its ``CUDA_VISIBLE_DEVICES``, its ``BENCH_DATA_DIR`` holding the prepared
data), into a temporary run folder. It returns the cell's result (as the cell wrote it;
the driver validates it), its log and its TensorBoard files, which the driver writes
atomically into its own run folder.

Progress goes back live as Dask events on the run's topic: ``start`` when the task starts
(so the driver can count attempts: a worker lost mid-cell has its task started again
elsewhere) and ``cell`` for each of the cell's progress events. When the driver cancels
the task (a signal, or the driver gone), the cell's process is stopped within a second.

:func:`identity` is what the driver compares with its own before submitting anything:
the code revision and the lock digest a worker runs.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import tempfile
from pathlib import Path
from typing import Any

from harness import threads
from harness.executors import process

MAX_SHIPPED_BYTES = 256 * 2**20  # TensorBoard files beyond this stay on the worker (said so)


def identity() -> dict[str, Any]:
    """The code and environment this process runs: git commit (or the image's), lock digest."""
    from harness import env

    commit = env.git_commit()
    if commit is None:
        container = env.container_info() or {}
        commit = (container.get("build") or {}).get("git_commit")
    return {
        "git_commit": commit,
        "lock_digest": env.lock_info()["digest"],
        "python": platform.python_version(),
        "host": socket.gethostname(),
    }


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one cell job on this worker (``spec``: see :mod:`harness.executors.cluster`)."""
    from distributed import get_worker

    worker = get_worker()
    key = worker.get_current_task()
    topic = spec["topic"]
    where = {
        "worker": str(worker.name),
        "address": worker.address,
        "worker_pid": os.getpid(),
        "host": socket.gethostname(),
    }
    worker.log_event(topic, {"event": "start", "job": spec["job"], "key": str(key), **where})
    host_slots = int(spec.get("host_slots", {}).get(worker.address, 1))
    has_gpu = bool(worker.state.total_resources.get("GPU"))
    placed = {
        "executor": "dask",
        "scheduler": spec["scheduler"],
        **where,
        "gpu_resource": has_gpu,
        "cells_on_host": host_slots,
        "shared": host_slots > 1 and not has_gpu,
    }

    def on_event(ev: dict[str, Any]) -> None:
        if ev.get("event") in ("ready", "epoch"):
            worker.log_event(topic, {"event": "cell", "job": spec["job"], "data": ev})

    def should_stop() -> bool:
        ts = worker.state.tasks.get(key)
        return ts is None or ts.state in ("cancelled", "released", "forgotten")

    with tempfile.TemporaryDirectory(prefix="bench-cell-") as tmp:
        run_dir = Path(tmp)
        log_path = run_dir / spec["log_rel"]
        end = process.run(
            tuple(spec["args"]),
            run_dir=run_dir,
            log_path=log_path,
            env={process.PLACEMENT_ENV: json.dumps(placed), **spec.get("thread_env", {})},
            unset=threads.USER_VARS,  # the worker's (Dask's Nanny sets OMP_NUM_THREADS=1)
            on_event=on_event,
            should_stop=should_stop,
        )
        result_path = run_dir / spec["result_rel"]
        result = _read_json(result_path)
        files, left = _files(run_dir, skip={result_path, log_path})
        return {
            "returncode": end.returncode,
            "tail": list(end.tail),
            "start_seconds": end.start_seconds,
            "process_seconds": end.process_seconds,
            "log_error": end.log_error,
            "stopped": end.stopped,
            "result": result,
            "log": log_path.read_bytes() if log_path.is_file() else b"",
            "files": files,
            "files_left_on_worker": left,
            "placement": placed,
            "identity": identity(),
        }


def _read_json(path: Path) -> dict[str, Any] | None:
    """The result file as the cell wrote it (None when there is none or it is not JSON:
    the driver then records the cell as failed, as it does for a local process)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _files(run_dir: Path, *, skip: set[Path]) -> tuple[dict[str, bytes], list[str]]:
    """Other files the cell wrote (TensorBoard events), up to :data:`MAX_SHIPPED_BYTES`."""
    out: dict[str, bytes] = {}
    left: list[str] = []
    total = 0
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and p not in skip):
        rel = str(path.relative_to(run_dir))
        size = path.stat().st_size
        if total + size > MAX_SHIPPED_BYTES:
            left.append(rel)
            continue
        out[rel] = path.read_bytes()
        total += size
    return out, left
