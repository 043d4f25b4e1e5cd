"""Figures measured through real cells: the linear probe's speed-up over feature-extract,
and the cost of starting a cell process.

Two cells of one profile run as ``bench run CELL`` processes (the orchestrator's own
path: pre-flight, one process per cell, ``processes.json``), on the synthetic few-class
target with the shipped pretrained backbone (offline, any machine), at 224 px (the
experiment's size; ``--quick``: 32 px):

- ``feature-extract`` with a linear head (``dense_units = 0``) and no augmentation: the
  backbone runs on every image every epoch;
- ``linear-probe``: the same frozen backbone run once over every split (features
  cached), then the same linear softmax head trained on the features.

Same model, same optimizer, same epochs, so the accuracies agree within noise; the
speed-up is feature-extract's training seconds (epochs, validation included) over the
linear probe's feature caching plus its training seconds. It grows with the epochs E and
with the cost F of a backbone epoch against the fixed cost L of a probe epoch, about
``E / (1.25 + E·L/F)`` (the cache is one pass over train, val and test), so it is small
for tiny images and few epochs. TensorBoard is off in both (``BENCH_TENSORBOARD=0``): its
per-epoch writes are the harness's cost, not the strategy's. It holds when it reaches the
target *and* the best validation accuracies are within :data:`ACCURACY_POINTS`.
The start cost is ``start_seconds`` of ``processes.json``: spawn until the cell process
has imported Keras and its backend (its "ready" event).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import paths
from harness.errors import BenchError

ACCURACY_POINTS = 1.0
DATASET = "synth-few"
WEIGHTS = "mnv2-synth-a035-32"

PROFILE = """\
[profile]
description = "bench perf: feature-extract vs linear-probe, same linear head"

[tolerances]
accuracy_points = 100.0
throughput_relative = 0.5

[defaults]
image_size = {size}
alpha = 0.35
weights = "{weights}"
batch_size = 32
epochs = {epochs}
learning_rate = 1e-3
dense_units = 0
augmentation = "none"
warmup_steps = 3
inference_batch = 32
inference_steps = 2
inference_warmup = 1

[[cells]]
datasets = ["{dataset}"]
strategies = ["feature-extract", "linear-probe"]
precisions = ["float32"]
seeds = [0]
"""


def measure_cells(workdir: Path, *, epochs: int, image_size: int = 224) -> dict[str, Any]:
    """Run the two cells (see the module doc) under ``workdir``; their figures."""
    from harness import results
    from harness.matrix import load_matrix

    profile = workdir / "perf-probe.toml"
    profile.write_text(
        PROFILE.format(weights=WEIGHTS, epochs=epochs, dataset=DATASET, size=image_size)
    )
    runs = workdir / "runs"
    env = dict(os.environ)
    env.pop("BENCH_PROFILE", None)
    env.update(
        BENCH_HOME=str(paths.project_root()),
        BENCH_DATA_DIR=str(workdir / "data"),
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        BENCH_TENSORBOARD="0",
    )
    cells: dict[str, Any] = {}
    starts: list[float] = []
    for i, cell in enumerate(load_matrix(str(profile)).cells):
        run_id = f"c{i}"
        cmd = [
            sys.executable, "-m", "harness.cli", "run", cell.cell_id, "--profile", str(profile),
            "--runs-dir", str(runs), "--run-id", run_id,
        ]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        run_dir = runs / run_id
        path = run_dir / "cells" / results.cell_filename(cell.cell_id)
        if proc.returncode != 0 or not path.is_file():
            last = proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or [""]
            raise BenchError(
                f"bench perf: cell {cell.cell_id} failed (exit {proc.returncode}): {last[-1]}",
                exit_code=proc.returncode if proc.returncode in (1, 2) else 3,
            )
        cells[cell.strategy] = results.read_cell(path)
        procs = json.loads((run_dir / "processes.json").read_text())["cells"]
        starts += [p["start_seconds"] for p in procs if p.get("start_seconds") is not None]
    fe, lp = cells["feature-extract"], cells["linear-probe"]
    fe_s = sum(h.seconds for h in fe.history)
    cache = lp.extra.get("feature_cache", {})
    lp_train = sum(h.seconds for h in lp.history)
    lp_s = float(cache.get("seconds", 0.0)) + lp_train
    acc_fe, acc_lp = fe.best_val_accuracy or 0.0, lp.best_val_accuracy or 0.0
    return {
        "probe": {
            "setting": f"{DATASET} {image_size}px, MobileNetV2 a0.35 pretrained ({WEIGHTS}), "
            f"linear head, no augmentation, batch 32, {epochs} epochs each, TensorBoard off",
            "feature_extract_s": fe_s,
            "linear_probe_s": lp_s,
            "linear_probe_cache_s": float(cache.get("seconds", 0.0)),
            "linear_probe_train_s": lp_train,
            "speedup": fe_s / lp_s if lp_s > 0 else None,
            "feature_extract_best_val": acc_fe,
            "linear_probe_best_val": acc_lp,
            "accuracy_gap_points": 100 * abs(acc_fe - acc_lp),
            "accuracy_matched": 100 * abs(acc_fe - acc_lp) <= ACCURACY_POINTS,
        },
        "cell_start": {
            "setting": "spawn to Keras and its backend imported (processes.json start_seconds)",
            "samples_s": starts,
            "median_s": statistics.median(starts) if starts else None,
        },
    }
