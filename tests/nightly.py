"""Builders of a history of nightly run folders for the history, dashboard and MLflow tests.

Each night is a real run folder written with :mod:`harness.results` (cells from
:mod:`runkit`), with its own start time, git commit and environment fingerprint, so that
the history index sees what a sequence of ``bench all`` nights would leave behind.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import runkit

from harness import runfolder
from harness.results import CellResult, RunInfo

STEP_CELL = "synth-few/fine-tune/float32/s0"
FIRST_NIGHT = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def commit_of(night: int, salt: str = "") -> str:
    """A 40-hex commit id per night (deterministic)."""
    return hashlib.sha1(f"night-{night}{salt}".encode()).hexdigest()


def environment(
    cpu_model: str = "AMD EPYC 7B13", lock: str | None = "1" * 64, **overrides: Any
) -> dict[str, Any]:
    """A fingerprint with a lock digest (``lock=None``: a run from before locks were recorded)."""
    env = runkit.environment(cpu_model=cpu_model, **overrides)
    if lock is not None:
        env["lock"] = {"digest": lock, "path": "/repo/uv.lock"}
    return env


def night_cells(night: int, *, rate_factor: float = 1.0, step_cell: str = STEP_CELL) -> list:
    """The standard six cells; ``step_cell``'s train throughput scaled by ``rate_factor``."""
    out: list[CellResult] = []
    for c in runkit.standard_cells():
        # A fresh noise draw per night (the seed moves), as real nights would give.
        assert c.train_throughput is not None and c.inference_throughput is not None
        rate = c.train_throughput.images_per_s * (rate_factor if c.cell_id == step_cell else 1.0)
        train = runkit.throughput(rate, noise=0.02, seed=1000 + night)
        inference = runkit.throughput(
            c.inference_throughput.images_per_s, noise=0.02, phase="inference", seed=2000 + night
        )
        out.append(replace(c, train_throughput=train, inference_throughput=inference))
    return out


def write_night(
    runs_dir: Path,
    night: int,
    cells: list[CellResult],
    *,
    profile: str = "smoke",
    env: dict[str, Any] | None = None,
    commit: str | None = None,
    when: datetime | None = None,
    run_id: str | None = None,
) -> Path:
    """One run folder ``runs_dir/<run_id>`` for ``night`` (start time FIRST_NIGHT + night days)."""
    start = when or FIRST_NIGHT + timedelta(days=night)
    run_id = run_id or f"{start:%Y%m%d-%H%M%S}-{profile}"
    commit = commit or commit_of(night)
    fp = dict(env or environment())
    fp["git_commit"] = commit
    info = RunInfo(
        run_id=run_id,
        profile=profile,
        matrix={"profile": profile},
        environment=fp,
        manifest_digest="f" * 64,
        git_commit=commit,
        started_at=start.isoformat(timespec="seconds"),
        cell_ids=tuple(c.cell_id for c in cells),
        finished_at=(start + timedelta(minutes=5)).isoformat(timespec="seconds"),
        tolerances={"accuracy_points": 2.0, "throughput_relative": 0.10},
    )
    run_dir = Path(runs_dir) / run_id
    runfolder.write_run(run_dir, info)
    for c in cells:
        runfolder.write_cell(run_dir, c)
    return run_dir


def write_history(
    runs_dir: Path,
    nights: int = 8,
    *,
    step_at: int | None = 5,
    factor: float = 0.7,
    env: dict[str, Any] | None = None,
    profile: str = "smoke",
) -> list[Path]:
    """``nights`` runs; from night ``step_at`` on, STEP_CELL trains at ``factor`` x the rate."""
    return [
        write_night(
            runs_dir,
            n,
            night_cells(n, rate_factor=factor if step_at is not None and n >= step_at else 1.0),
            env=env,
            profile=profile,
        )
        for n in range(nights)
    ]
