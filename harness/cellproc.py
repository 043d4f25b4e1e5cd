"""One cell, one process: ``python -m harness.cellproc --cell-json ... --run-dir DIR``.

The orchestrator (:mod:`harness.orchestrate`) starts this module once per cell so that
global state (seed, precision policy, graph caches, device memory) cannot leak between
cells and a crash or out-of-memory kill fails that cell only. It sets the backend's
environment *before* Keras is imported, runs the cell, writes ``cells/<cell>.json`` and
reports progress as ``@@bench {json}`` lines on stdout (everything else it prints goes to
the cell's log). Exit status: 0 ok or skipped, 1 failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

EVENT_PREFIX = "@@bench "


def emit(event: str, **data: Any) -> None:
    """One progress event for the orchestrator, on its own line."""
    sys.stdout.write(EVENT_PREFIX + json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.cellproc")
    ap.add_argument("--cell-json", required=True, help="the resolved CellSpec as JSON")
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--allow-unpinned", action="store_true")
    ap.add_argument("--spawned-at", type=float, default=None, help="time.time() at spawn")
    args = ap.parse_args(argv)

    from harness import backend
    from harness.matrix import CellSpec

    cell = CellSpec(**json.loads(args.cell_json))
    backend_name = args.backend or cell.backend or backend.configured_backend()
    backend.prepare_process(backend_name, deterministic=cell.deterministic)
    t0 = time.perf_counter()
    import keras  # noqa: F401  (the backend import is part of the process start cost)

    from harness import results, runner
    from harness.errors import BenchError

    ready = time.time()
    start_cost = None if args.spawned_at is None else ready - args.spawned_at
    emit("ready", cell=cell.cell_id, start_seconds=start_cost, backend=backend_name)
    process = {"start_to_ready_s": start_cost, "backend_import_s": time.perf_counter() - t0}
    try:
        result = runner.run_cell(
            cell,
            dry_run=args.dry_run,
            on_epoch=lambda ev: emit("epoch", cell=cell.cell_id, **ev),
            allow_unpinned=args.allow_unpinned,
            run_dir=args.run_dir,
        )
        result = _with_extra(result, process=process)
    except runner.PrecisionUnsupported as exc:
        status = "skipped" if cell.skip_if_unsupported else "failed"
        result = _failure(cell, exc.message, ready, backend_name, process, status=status)
    except BenchError as exc:
        result = _failure(cell, exc.message, ready, backend_name, process)
    except Exception as exc:  # any crash of the cell is recorded, the run goes on
        traceback.print_exc()
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        result = _failure(cell, msg, ready, backend_name, process)
    results.write_cell(args.run_dir, result)
    emit("done", cell=cell.cell_id, status=result.status, error=result.error,
         wall_seconds=result.wall_seconds)  # fmt: skip
    return 0 if result.status in ("ok", "skipped") else 1


def _failure(
    cell: Any, msg: str, ready: float, backend_name: str, process: dict, status: str = "failed"
) -> Any:
    from harness import runner

    return runner.failed_result(
        cell, msg, wall_seconds=time.time() - ready, backend_name=backend_name,
        status=status, extra={"process": process},
    )  # fmt: skip


def _with_extra(result: Any, **more: Any) -> Any:
    import dataclasses

    return dataclasses.replace(result, extra={**result.extra, **more})


if __name__ == "__main__":
    sys.exit(main())
