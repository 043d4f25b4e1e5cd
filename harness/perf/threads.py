"""Thread efficiency: the smoke cells' train images/s at the thread rule's setting, over the
best of a small sweep of settings (``bench perf``'s ``thread_efficiency``, target >= 0.95).

The rule (:mod:`harness.threads`) picks each cell's intra-op threads from its work per step;
this checks it against the alternatives on this machine. Each smoke strategy runs on the
few-class target as its own ``bench run CELL`` process, at the smoke profile's settings
(32 px, alpha 0.35, batch 32, the shipped backbone), under

* the rule's choice (no thread variable set), and
* every reproducible alternative: intra-op threads in {1, cores} with one inter-op thread
  (``TF_NUM_INTRAOP_THREADS`` = ``OMP_NUM_THREADS``, ``TF_NUM_INTEROP_THREADS=1``), and,
  for the record only, the same with inter-op threads = cores, which is faster on small
  steps but not deterministic (:mod:`harness.threads`), so it is not a setting the rule
  may choose for a deterministic cell,

interleaved round by round so a change of load hits every setting alike. Per cell, the
median over rounds of each setting's train images/s; its efficiency is the rule's figure
over the best reproducible setting's (the rule's own included). The figure is the
geometric mean over cells, with each cell's (and the non-deterministic settings')
kept in the details.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from harness.perf.cells import DATASET, WEIGHTS, run_cell
from harness.threads import usable_cores

STRATEGIES = ("scratch", "feature-extract", "fine-tune", "full-fine-tune")
TARGET = 0.95

PROFILE = """\
[profile]
description = "bench perf: the smoke cells' throughput under several thread settings"

[tolerances]
accuracy_points = 100.0
throughput_relative = 0.5

[defaults]
image_size = 32
alpha = 0.35
weights = "{weights}"
batch_size = 32
epochs = {epochs}
learning_rate = 1e-3
bn_momentum = 0.9
fine_tune_k = 140
augmentation = "flip"
warmup_steps = 3
inference_batch = 32
inference_steps = 2
inference_warmup = 1

[[cells]]
datasets = ["{dataset}"]
strategies = [{strategies}]
precisions = ["float32"]
seeds = [0]
"""


def settings(cores: int) -> dict[str, dict[str, str]]:
    """The rule's setting (no variables) and the sweep, by name."""
    out: dict[str, dict[str, str]] = {"rule": {}}
    for inter in sorted({1, cores}):
        for intra in sorted({1, cores}):
            out[f"intra{intra}-inter{inter}"] = {
                "TF_NUM_INTRAOP_THREADS": str(intra),
                "OMP_NUM_THREADS": str(intra),
                "TF_NUM_INTEROP_THREADS": str(inter),
            }
    return out


def reproducible(name: str) -> bool:
    """Whether a sweep setting keeps op determinism (one inter-op thread, or the rule's)."""
    return name == "rule" or name.endswith("-inter1")


def measure_threads(
    workdir: Path, *, rounds: int, epochs: int = 2, strategies: tuple[str, ...] = STRATEGIES
) -> dict[str, Any]:
    """Run the sweep (see the module doc) under ``workdir``; the figure and its details."""
    profile = workdir / "perf-threads.toml"
    quoted = ", ".join(f'"{s}"' for s in strategies)
    profile.write_text(
        PROFILE.format(weights=WEIGHTS, epochs=epochs, dataset=DATASET, strategies=quoted)
    )
    cores = usable_cores()
    sweep = settings(cores)
    rates: dict[str, dict[str, list[float]]] = {s: {n: [] for n in sweep} for s in strategies}
    chosen: dict[str, Any] = {}
    for r in range(rounds):
        for strategy in strategies:
            cell_id = f"{DATASET}/{strategy}/float32/s0"
            for name, env in sweep.items():
                result, _ = run_cell(workdir, profile, cell_id, f"{strategy}-{name}-r{r}", **env)
                if result.train_throughput is not None:
                    rates[strategy][name].append(result.train_throughput.images_per_s)
                if name == "rule":
                    chosen[strategy] = result.extra.get("placement", {}).get("thread_plan")
    per_cell: dict[str, Any] = {}
    for strategy, by_setting in rates.items():
        medians = {n: statistics.median(v) for n, v in by_setting.items() if v}
        best = max((n for n in medians if reproducible(n)), key=medians.__getitem__)
        fastest = max(medians, key=medians.__getitem__)
        per_cell[strategy] = {
            "images_per_s": medians,
            "best": best,
            "efficiency": medians["rule"] / medians[best],
            "fastest_any": fastest,
            "rule_over_fastest_any": medians["rule"] / medians[fastest],
            "rule_plan": chosen.get(strategy),
        }
    effs = [c["efficiency"] for c in per_cell.values()]
    return {
        "setting": f"{DATASET} 32px, MobileNetV2 a0.35 ({WEIGHTS}), batch 32, {epochs} epochs, "
        f"{rounds} interleaved round(s), {cores} usable cores",
        "efficiency": math.exp(statistics.fmean(math.log(e) for e in effs)),
        "min_efficiency": min(effs),
        "cells": per_cell,
        "target": TARGET,
    }
