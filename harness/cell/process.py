"""One cell, one process: ``python -m harness.cell.process --cell-json ... --run-dir DIR``.

The orchestrator (:mod:`harness.run.orchestrate`) starts this module once per cell so that
global state (seed, precision policy, graph caches, device memory) cannot leak between
cells and a crash or out-of-memory kill fails that cell only. It sets the backend's
environment *before* Keras is imported, runs the cell, writes ``cells/<cell>.json`` and
reports progress as ``@@bench {json}`` lines on stdout (everything else it prints goes to
the cell's log). Exit status: 0 ok or skipped, 1 failed.

Every executor (:mod:`harness.executors`) runs this same command; what it adds is in the
environment: :data:`PLACEMENT_ENV` (where the cell runs: executor, slot or worker,
device, whether it shares the machine), recorded in the result as ``extra.placement``
with the thread settings the process actually has; :data:`AFFINITY_ENV` (cores to pin
to, before any thread pool starts); :data:`PARENT_ENV` (the process to die with).
``--result`` and ``--no-tensorboard`` serve repeats (``repeats = N``): each repeat writes
its own file and only the first writes TensorBoard events.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

EVENT_PREFIX = "@@bench "
PLACEMENT_ENV = "BENCH_PLACEMENT"  # JSON: where the cell runs (recorded in its result)
AFFINITY_ENV = "BENCH_CPU_AFFINITY"  # "0,1": the cores the cell process pins itself to
PARENT_ENV = "BENCH_PARENT_PID"  # the process this one dies with


def emit(event: str, **data: Any) -> None:
    """One progress event for the orchestrator, on its own line."""
    sys.stdout.write(EVENT_PREFIX + json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def die_with_parent() -> None:
    """SIGKILL when the process (thread) that started this one ends (Linux
    ``PR_SET_PDEATHSIG``), and exit at once if that already happened; only when started
    with :data:`PARENT_ENV` (not for a cell started by hand)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent.isdigit() and os.getppid() != int(parent):  # it died before prctl took hold
        os._exit(1)


def apply_affinity() -> None:
    """Pin this process to the cores :data:`AFFINITY_ENV` names, before any framework sizes
    its thread pools (TensorFlow, XLA and OpenMP count the cores they may use)."""
    spec = os.environ.get(AFFINITY_ENV)
    if not spec:
        return
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.sched_setaffinity(0, {int(c) for c in spec.split(",") if c.strip()})


def placement() -> dict[str, Any]:
    """Where this cell runs, as its executor described it (:data:`PLACEMENT_ENV`), plus what
    the process actually has: thread variables, usable cores, visible GPUs."""
    try:
        placed = json.loads(os.environ.get(PLACEMENT_ENV) or "{}")
    except ValueError:
        placed = {}
    if not isinstance(placed, dict):
        placed = {}
    from harness.env import thread_settings

    return {
        "executor": "serial",
        **placed,
        "threads": thread_settings(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def plan_threads(cell: Any) -> Any:
    """Choose and set this cell's thread counts (:mod:`harness.threads`) before any
    framework starts its pools; the plan is recorded in the result."""
    from harness import threads

    chosen = threads.plan(
        image_size=cell.image_size,
        alpha=cell.alpha,
        batch_size=cell.batch_size,
        deterministic=cell.deterministic,
    )
    threads.apply(chosen)
    return chosen


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    apply_affinity()
    ap = argparse.ArgumentParser(prog="python -m harness.cell.process")
    ap.add_argument("--cell-json", required=True, help="the resolved CellSpec as JSON")
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--allow-unpinned", action="store_true")
    ap.add_argument("--spawned-at", type=float, default=None, help="time.time() at spawn")
    ap.add_argument(
        "--result", default=None, help="result file relative to --run-dir (default cells/<cell>)"
    )
    ap.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard events")
    args = ap.parse_args(argv)

    from harness import backend
    from harness.matrix import CellSpec

    cell = CellSpec(**json.loads(args.cell_json))
    backend_name = args.backend or cell.backend or backend.configured_backend()
    thread_plan = plan_threads(cell)
    backend.prepare_process(backend_name, deterministic=cell.deterministic)
    t0 = time.perf_counter()
    import keras  # noqa: F401  (the backend import is part of the process start cost)

    from harness import runfolder
    from harness.cell import runner
    from harness.errors import BenchError

    ready = time.time()
    start_cost = None if args.spawned_at is None else ready - args.spawned_at
    emit("ready", cell=cell.cell_id, start_seconds=start_cost, backend=backend_name)
    process = {"start_to_ready_s": start_cost, "backend_import_s": time.perf_counter() - t0}
    placed = {**placement(), "thread_plan": thread_plan.to_dict()}
    try:
        result = runner.run_cell(
            cell,
            dry_run=args.dry_run,
            on_epoch=lambda ev: emit("epoch", cell=cell.cell_id, **ev),
            allow_unpinned=args.allow_unpinned,
            run_dir=None if args.no_tensorboard else args.run_dir,
        )
        from harness.env import imported_distributions

        process["imports"] = imported_distributions()
        result = _with_extra(result, process=process, placement=placed)
    except runner.PrecisionUnsupported as exc:
        status = "skipped" if cell.skip_if_unsupported else "failed"
        result = _failure(cell, exc.message, ready, backend_name, process, placed, status)
    except BenchError as exc:
        result = _failure(cell, exc.message, ready, backend_name, process, placed)
    except Exception as exc:  # any crash of the cell is recorded, the run goes on
        traceback.print_exc()
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        result = _failure(cell, msg, ready, backend_name, process, placed)
    if args.result:
        runfolder.write_cell_file(args.run_dir / args.result, result)
    else:
        runfolder.write_cell(args.run_dir, result)
    emit("done", cell=cell.cell_id, status=result.status, error=result.error,
         wall_seconds=result.wall_seconds)  # fmt: skip
    return 0 if result.status in ("ok", "skipped") else 1


def _failure(
    cell: Any,
    msg: str,
    ready: float,
    backend_name: str,
    process: dict,
    placed: dict,
    status: str = "failed",
) -> Any:
    from harness import runfolder

    return runfolder.failed_result(
        cell, msg, wall_seconds=time.time() - ready, backend_name=backend_name,
        status=status, extra={"process": process, "placement": placed},
    )  # fmt: skip


def _with_extra(result: Any, **more: Any) -> Any:
    import dataclasses

    return dataclasses.replace(result, extra={**result.extra, **more})


if __name__ == "__main__":
    sys.exit(main())
