"""Runner overhead: harness vs bare ``model.fit``, and the smoke matrix's wall time.

Run: ``.venv/bin/pytest benchmarks/bench_overhead.py --benchmark-only -s`` (or
``.venv/bin/python benchmarks/bench_overhead.py``). Figures go to stdout and to each
benchmark's ``extra_info``.

1. **Harness overhead** (target >= 0.97), :func:`harness.perf.training.measure_overhead`
   (the same figure as ``bench perf``): the smoke setting (MobileNetV2 alpha 0.35, 32 px,
   full-fine-tune, batch 32, float32, augmentation in the model), uint8 arrays in memory.
   ``model.fit`` for one epoch of the model compiled the plain Keras way, then of the same
   architecture through the harness's compile path with its callbacks (step timer, epoch
   timer with learning-rate logging, time-to-target), interleaved, several rounds after
   warm-up fits that trace the graphs.
   Ratio = median bare epoch time / median harness epoch time (same steps, same batch);
   on a busy machine the best-of and the CPU-seconds ratios are the steadier figures.
   Also reported: the harness's own figure (batch / median step time) against the bare
   epoch rate.
2. **Smoke matrix wall time** (target < 180 s): ``bench all --profile smoke`` through the
   CLI into a temporary runs folder, datasets prepared beforehand (their one-time
   generation is timed separately), plus the per-cell process start cost (spawn until
   Keras and TensorFlow are imported, from ``processes.json``) and, for scale, a bare
   ``python -c "import keras"``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STEPS = 40
BATCH = 32
ROUNDS = 7


def measure_overhead(rounds: int = ROUNDS) -> dict[str, Any]:
    """What ``bench perf`` measures as ``harness_overhead_ratio`` (one implementation)."""
    from harness.perf.training import measure_overhead as measure

    return measure(STEPS, rounds)


def measure_smoke(runs_dir: Path, data_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "BENCH_DATA_DIR": str(data_dir), "BENCH_HOME": str(REPO)}
    t0 = time.perf_counter()
    prep = (
        "from harness.datasets.prepare import ensure_prepared\n"
        "for n in ('synth-few', 'synth-many', 'synth-xray'): ensure_prepared(n, 32)\n"
    )
    subprocess.run([sys.executable, "-c", prep], env=env, cwd=REPO, check=True)
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "all", "--profile", "smoke",
         "--runs-dir", str(runs_dir), "--run-id", "smoke"],
        env=env, cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import keras"], env=env, check=True, capture_output=True)
    import_s = time.perf_counter() - t0
    procs = json.loads((runs_dir / "smoke" / "processes.json").read_text())["cells"]
    starts = [c["start_seconds"] for c in procs if c["start_seconds"] is not None]
    cells = [c["process_seconds"] for c in procs if c["process_seconds"] is not None]
    return {
        "exit_code": proc.returncode,
        "matrix_wall_s": wall,
        "cells": len(procs),
        "failed": [c["cell_id"] for c in procs if c["status"] == "failed"],
        "cell_process_s": cells,
        "start_cost_s_median": statistics.median(starts) if starts else None,
        "start_cost_s_total": sum(starts),
        "bare_import_keras_s": import_s,
        "dataset_generation_s": prepare_s,
        "load_average_1m": os.getloadavg()[0],
    }


def test_harness_overhead(benchmark: Any) -> None:
    out = benchmark.pedantic(measure_overhead, rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    print(json.dumps(out, indent=2))
    assert out["ratio_harness_over_bare"] > 0


def test_smoke_matrix_wall_time(benchmark: Any, tmp_path: Path) -> None:
    out = benchmark.pedantic(
        measure_smoke, args=(tmp_path / "runs", tmp_path / "data"), rounds=1, iterations=1
    )
    benchmark.extra_info.update(out)
    print(json.dumps(out, indent=2))
    assert out["exit_code"] == 0, out["failed"]


if __name__ == "__main__":
    print(json.dumps(measure_overhead(), indent=2))
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure_smoke(Path(tmp) / "runs", Path(tmp) / "data"), indent=2))
