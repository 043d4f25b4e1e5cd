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

Same model, same optimizer, same epochs. The speed-up is at equal accuracy
(:func:`probe_speedup`): the time each needs to reach the same validation accuracy (the
lower of the two bests less :data:`ACCURACY_POINTS`), feature-extract's training seconds
(validation included) over the probe's feature caching plus its training seconds. Over
a fixed number of epochs E it is about ``E / (1.25 + E·L/F)``, with F the cost of a
backbone epoch and L the fixed cost of a probe epoch (the cache is one pass over train,
val and test): small for tiny images. TensorBoard is off in both
(``BENCH_TENSORBOARD=0``): its per-epoch writes are the harness's cost, not the
strategy's.
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
    from harness.matrix import load_matrix

    profile = workdir / "perf-probe.toml"
    profile.write_text(
        PROFILE.format(weights=WEIGHTS, epochs=epochs, dataset=DATASET, size=image_size)
    )
    cells: dict[str, Any] = {}
    starts: list[float] = []
    for i, cell in enumerate(load_matrix(str(profile)).cells):
        result, start = run_cell(workdir, profile, cell.cell_id, f"c{i}")
        cells[cell.strategy] = result
        starts += [start] if start is not None else []
    fe, lp = cells["feature-extract"], cells["linear-probe"]
    cache_s = float(lp.extra.get("feature_cache", {}).get("seconds", 0.0))
    probe = probe_speedup(
        [(h.val_accuracy or 0.0, h.seconds) for h in fe.history],
        [(h.val_accuracy or 0.0, h.seconds) for h in lp.history],
        cache_s,
    )
    return {
        "probe": {
            "setting": f"{DATASET} {image_size}px, MobileNetV2 a0.35 pretrained ({WEIGHTS}), "
            f"linear head, no augmentation, batch 32, {epochs} epochs each, TensorBoard off",
            **probe,
        },
        "cell_start": {
            "setting": "spawn to Keras and its backend imported (processes.json start_seconds)",
            "samples_s": starts,
            "median_s": statistics.median(starts) if starts else None,
        },
    }


def cell_env(workdir: Path, **more: str) -> dict[str, str]:
    """The environment of a measured cell process: this project, the work folder's data,
    TensorBoard off, and ``more`` (e.g. thread settings)."""
    env = dict(os.environ)
    env.pop("BENCH_PROFILE", None)
    env.update(
        BENCH_HOME=str(paths.project_root()),
        BENCH_DATA_DIR=str(workdir / "data"),
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        BENCH_TENSORBOARD="0",
        **more,
    )
    return env


def run_cell(
    workdir: Path, profile: Path, cell_id: str, run_id: str, **env: str
) -> tuple[Any, float | None]:
    """``bench run CELL`` of ``profile`` into ``workdir/runs/run_id``: its result and its
    process start cost (BenchError naming the cell when it fails)."""
    from harness import runfolder

    runs = workdir / "runs"
    cmd = [
        sys.executable, "-m", "harness.cli", "run", cell_id, "--profile", str(profile),
        "--runs-dir", str(runs), "--run-id", run_id,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=cell_env(workdir, **env), capture_output=True, text=True)
    run_dir = runs / run_id
    path = runfolder.cell_path(run_dir, cell_id)
    if proc.returncode != 0 or not path.is_file():
        last = proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or [""]
        raise BenchError(
            f"bench perf: cell {cell_id} failed (exit {proc.returncode}): {last[-1]}",
            exit_code=proc.returncode if proc.returncode in (1, 2) else 3,
        )
    procs = json.loads((run_dir / runfolder.PROCESSES_JSON).read_text())["cells"]
    start = next((p["start_seconds"] for p in procs if p.get("start_seconds") is not None), None)
    return runfolder.read_cell(path), start


def probe_speedup(
    fe: list[tuple[float, float]], lp: list[tuple[float, float]], cache_s: float
) -> dict[str, Any]:
    """The speed-up at equal accuracy from both cells' epochs ``(val accuracy, seconds)``.

    The common target is the lower of the two best validation accuracies less
    :data:`ACCURACY_POINTS`, so both reach it; each side's time is its training seconds up
    to the first epoch at or above it (the probe's feature caching included), and the
    speed-up is feature-extract's time over the probe's. Also kept: the same-epochs
    figure (all epochs of each) and the best accuracies of both.
    """
    if not fe or not lp:
        raise ValueError("probe_speedup needs the epochs of both cells")
    best_fe, best_lp = max(a for a, _ in fe), max(a for a, _ in lp)
    target = min(best_fe, best_lp) - ACCURACY_POINTS / 100

    def time_to(epochs: list[tuple[float, float]], start: float) -> tuple[float, int]:
        t = start
        for i, (acc, secs) in enumerate(epochs):
            t += secs
            if acc >= target:
                return t, i + 1
        raise AssertionError("the target is below the best accuracy, so it is reached")

    t_fe, e_fe = time_to(fe, 0.0)
    t_lp, e_lp = time_to(lp, cache_s)
    all_fe = sum(s for _, s in fe)
    all_lp = cache_s + sum(s for _, s in lp)
    return {
        "target_val_accuracy": target,
        "feature_extract_s": t_fe,
        "feature_extract_epochs": e_fe,
        "linear_probe_s": t_lp,
        "linear_probe_epochs": e_lp,
        "linear_probe_cache_s": cache_s,
        "speedup": t_fe / t_lp if t_lp > 0 else None,
        "same_epochs_speedup": all_fe / all_lp if all_lp > 0 else None,
        "feature_extract_best_val": best_fe,
        "linear_probe_best_val": best_lp,
    }
