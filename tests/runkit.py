"""Builders of realistic run folders for the compare/baseline/report/findings tests.

They construct :class:`CellResult` / :class:`RunInfo` records (step-time series with a
chosen relative noise, plausible learning curves) and write them with
:mod:`harness.runfolder`, exactly as the runner does.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness import runfolder
from harness.results import CellResult, EpochRecord, RunInfo, Throughput


def environment(cpu_model: str = "AMD EPYC 7B13", cpu_count: int = 2, **overrides: Any) -> dict:
    """A fingerprint with every key of the contract."""
    env = {
        "harness_version": "0.1.0",
        "git_commit": "a0d8e09",
        "python": "3.11.9",
        "platform": "Linux-6.1-x86_64",
        "keras": "3.15.1",
        "backend": "tensorflow",
        "tensorflow": "2.21.0",
        "jax": None,
        "torch": None,
        "cuda": None,
        "cudnn": None,
        "gpu": None,
        "cpu": {"model": cpu_model, "count": cpu_count},
        "container": None,
        "manifest_digest": "f" * 64,
    }
    env.update(overrides)
    return env


def throughput(
    rate: float,
    *,
    noise: float = 0.02,
    batch: int = 32,
    precision: str = "float32",
    phase: str = "train",
    steps: int = 24,
    seed: int = 0,
) -> Throughput:
    """A throughput record whose step times scatter uniformly by ±``noise`` around batch/rate."""
    rng = random.Random(seed)
    base = batch / rate
    series = [base * (1 + rng.uniform(-noise, noise)) for _ in range(steps)]
    return Throughput.from_steps(
        phase, series, batch_size=batch, precision=precision, input_kind="real", warmup_steps=3
    )


def history(
    epochs: int, train_acc: float, val_acc: float, seed: int = 0
) -> tuple[EpochRecord, ...]:
    """Saturating learning curves ending near the given accuracies."""
    rng = random.Random(seed)
    out = []
    for e in range(epochs):
        frac = 1 - 0.6 ** (e + 1)
        tr = train_acc * frac
        va = min(val_acc * frac + rng.uniform(-0.01, 0.01), 1.0)
        out.append(
            EpochRecord(
                epoch=e,
                loss=2.0 * (1 - tr) + 0.05,
                accuracy=tr,
                val_loss=2.2 * (1 - va) + 0.1,
                val_accuracy=max(va, 0.0),
                learning_rate=1e-3,
                seconds=4.0 + rng.uniform(0, 0.2),
            )
        )
    out[-1] = replace(out[-1], accuracy=train_acc, val_accuracy=val_acc)
    return tuple(out)


def cell(
    dataset: str = "synth-few",
    strategy: str = "fine-tune",
    *,
    precision: str = "float32",
    seed: int = 0,
    val: float = 0.90,
    train: float = 0.97,
    test: float | None = 0.89,
    rate: float = 400.0,
    noise: float = 0.02,
    inference_rate: float | None = 1500.0,
    epochs: int = 4,
    status: str = "ok",
    error: str | None = None,
    config: dict[str, Any] | None = None,
) -> CellResult:
    """One realistic cell result (``status="failed"`` gives a failed cell with ``error``)."""
    cell_id = f"{dataset}/{strategy}/{precision}/s{seed}"
    cfg = {
        "dataset": dataset,
        "strategy": strategy,
        "epochs": epochs,
        "batch_size": 32,
        "image_size": 32,
        "learning_rate": 1e-3,
        "precision": precision,
        "seed": seed,
    }
    cfg.update(config or {})
    if status != "ok":
        return CellResult(
            cell_id=cell_id,
            dataset=dataset,
            strategy=strategy,
            precision=precision,
            seed=seed,
            backend="tensorflow",
            status=status,
            config=cfg,
            deterministic=True,
            error=error or "RuntimeError: boom",
            wall_seconds=3.0,
        )
    return CellResult(
        cell_id=cell_id,
        dataset=dataset,
        strategy=strategy,
        precision=precision,
        seed=seed,
        backend="tensorflow",
        status="ok",
        config=cfg,
        deterministic=True,
        history=history(epochs, train, val, seed=zlib.crc32(cell_id.encode())),
        best_train_accuracy=train,
        best_val_accuracy=val,
        final_val_accuracy=val,
        test_accuracy=test,
        target_accuracy=0.6,
        epochs_to_target=2 if val >= 0.6 else None,
        time_to_target_s=8.4 if val >= 0.6 else None,
        train_throughput=throughput(rate, noise=noise, precision=precision, seed=seed),
        inference_throughput=(
            throughput(
                inference_rate, noise=noise, phase="inference", precision=precision, seed=seed + 1
            )
            if inference_rate
            else None
        ),
        peak_memory_bytes=350 * 2**20,
        peak_memory_kind="host max rss",
        wall_seconds=21.5,
        trainable_layers=20,
        frozen_layers=134,
    )


def write_run(
    root: Path,
    cells: list[CellResult],
    *,
    run_id: str = "20261124-070000-smoke",
    profile: str = "smoke",
    env: dict | None = None,
    tolerances: dict | None = None,
) -> Path:
    """A run folder under ``root/reports/runs/<run_id>`` holding run.json and the cells."""
    run_dir = Path(root) / "reports" / "runs" / run_id
    info = RunInfo(
        run_id=run_id,
        profile=profile,
        matrix={"profile": profile},
        environment=env or environment(),
        manifest_digest="f" * 64,
        git_commit="a0d8e09",
        started_at="2026-11-24T07:00:00Z",
        cell_ids=tuple(c.cell_id for c in cells),
        finished_at="2026-11-24T07:05:00Z",
        tolerances=tolerances
        if tolerances is not None
        else {"accuracy_points": 2.0, "throughput_relative": 0.10},
    )
    runfolder.write_run(run_dir, info)
    for c in cells:
        runfolder.write_cell(run_dir, c)
    return run_dir


def standard_cells(**overrides: Any) -> list[CellResult]:
    """Three strategies on two datasets, as a smoke matrix might give."""
    specs = [
        ("synth-few", "scratch", 0.62, 0.80, 900.0),
        ("synth-few", "feature-extract", 0.88, 0.91, 2400.0),
        ("synth-few", "fine-tune", 0.90, 0.98, 1100.0),
        ("synth-xray", "scratch", 0.86, 0.93, 900.0),
        ("synth-xray", "feature-extract", 0.71, 0.74, 2400.0),
        ("synth-xray", "fine-tune", 0.83, 0.95, 1100.0),
    ]
    return [
        cell(d, s, val=v, train=t, test=round(v - 0.01, 4), rate=r, **overrides)
        for d, s, v, t, r in specs
    ]
