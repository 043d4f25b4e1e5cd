"""Trends over the history index: one series per cell, metric and machine, with its steps.

A **series** is the values of one metric of one cell across the runs of one profile, on one
**hardware identity and lock digest** (:mod:`harness.history.index`): two machines, or the
same machine with another dependency lock, are two series and never one line. Dry runs are
left out (their numbers come from random stand-ins).

Order is by run start time, or by commit: the position of the run's git commit in
``git rev-list --topo-order --reverse HEAD`` of the checkout (``+dirty`` stripped, short ids
matched by prefix), runs of one commit by time, and runs whose commit is not in that history
after all the others, by time.

Steps are found by :func:`harness.history.steps.detect_steps` (PELT, L1 cost; see there), with a
model per metric (:data:`METRICS`): rates, memory and time on a log scale (steps are
ratios), accuracies linearly (steps in points).
"""

from __future__ import annotations

import fnmatch
import json
import sqlite3
import subprocess
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.history.steps import Step, StepModel, detect_steps

ORDERS = ("time", "commit")


@dataclass(frozen=True)
class MetricSpec:
    """What a stored metric means and how steps in it are looked for."""

    name: str
    label: str
    unit: str
    higher_is_better: bool
    step_model: StepModel

    def format(self, value: float) -> str:
        if self.unit == "%":
            return f"{100 * value:.1f}%"
        return f"{value:,.1f} {self.unit}" if value < 100 else f"{value:,.0f} {self.unit}"


_ACC = StepModel(scale="linear", min_step=0.01, sigma_floor=0.002)  # 1 point; 0.2 points noise
_RATE = StepModel(scale="log", min_step=0.05, sigma_floor=0.005)  # 5 %; 0.5 % noise
_MEM = StepModel(scale="log", min_step=0.05, sigma_floor=0.002)
_TIME = StepModel(scale="log", min_step=0.10, sigma_floor=0.01)

METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("best_val_accuracy", "best val accuracy", "%", True, _ACC),
        MetricSpec("final_val_accuracy", "final val accuracy", "%", True, _ACC),
        MetricSpec("test_accuracy", "test accuracy", "%", True, _ACC),
        MetricSpec("train_images_per_s", "train throughput", "images/s", True, _RATE),
        MetricSpec("inference_images_per_s", "inference throughput", "images/s", True, _RATE),
        MetricSpec("peak_memory_mib", "peak memory", "MiB", False, _MEM),
        MetricSpec("wall_seconds", "wall time", "s", False, _TIME),
    )
}


@dataclass(frozen=True)
class Point:
    """One run's value of a series."""

    folder: str
    run_id: str
    started_at: str
    git_commit: str | None
    value: float


@dataclass(frozen=True)
class StepFound:
    """A step of a series, named by the first run (and commit) on the new level."""

    index: int  # position in the series of the first point after the step
    folder: str
    run_id: str
    git_commit: str | None
    started_at: str
    before: float
    after: float

    @property
    def relative(self) -> float:
        return self.after / self.before - 1.0 if self.before else float("nan")

    @property
    def absolute(self) -> float:
        return self.after - self.before

    def describe(self, spec: MetricSpec) -> str:
        if spec.unit == "%":
            size = f"{100 * self.absolute:+.1f} pts"
        else:
            size = f"{100 * self.relative:+.1f}%"
        commit = (self.git_commit or "unknown commit")[:12]
        return (
            f"{size} ({spec.format(self.before)} -> {spec.format(self.after)}) "
            f"from run {self.run_id} (commit {commit})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "folder": self.folder,
            "run_id": self.run_id,
            "git_commit": self.git_commit,
            "started_at": self.started_at,
            "before": self.before,
            "after": self.after,
            "relative": self.relative,
            "absolute": self.absolute,
        }


@dataclass(frozen=True)
class Series:
    """One metric of one cell across runs, on one hardware identity and lock."""

    profile: str
    cell_id: str
    metric: str
    hardware_id: str
    hardware_label: str
    lock_digest: str | None
    points: tuple[Point, ...]
    steps: tuple[StepFound, ...]

    @property
    def spec(self) -> MetricSpec:
        return METRICS[self.metric]

    @property
    def machine(self) -> str:
        """Hardware and lock, in words (what splits series)."""
        lock = self.lock_digest[:8] if self.lock_digest else "not recorded"
        return f"{self.hardware_label} · lock {lock}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "cell_id": self.cell_id,
            "metric": self.metric,
            "unit": self.spec.unit,
            "hardware_id": self.hardware_id,
            "hardware": self.hardware_label,
            "lock_digest": self.lock_digest,
            "points": [p.__dict__ for p in self.points],
            "steps": [s.to_dict() for s in self.steps],
        }


def commit_positions(repo: Path | None = None) -> list[str]:
    """Full commit ids reachable from HEAD of ``repo`` (default: the harness's), oldest first."""
    root = repo or Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-list", "--topo-order", "--reverse", "HEAD"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (subprocess.SubprocessError, OSError):
        return []
    return out.split()


def _commit_rank(commits: list[str]) -> Any:
    position = {c: i for i, c in enumerate(commits)}

    def rank(commit: str | None) -> int:
        if not commit:
            return len(commits)
        bare = commit.split("+", 1)[0]
        if bare in position:
            return position[bare]
        if len(bare) >= 7:
            return next((i for c, i in position.items() if c.startswith(bare)), len(commits))
        return len(commits)

    return rank


def query(
    conn: sqlite3.Connection,
    *,
    profile: str | None = None,
    cells: str | None = None,
    metrics: Iterable[str] | None = None,
    order: str = "time",
    repo: Path | None = None,
) -> list[Series]:
    """Every series matching the filters, with its steps (``cells``: comma-separated globs)."""
    if order not in ORDERS:
        raise InputError(f"--order {order!r}: expected one of {list(ORDERS)}")
    wanted = list(metrics) if metrics is not None else list(METRICS)
    unknown = [m for m in wanted if m not in METRICS]
    if unknown:
        raise InputError(f"--metric {unknown[0]!r}: expected one of {list(METRICS)}")
    sql = (
        "SELECT r.profile, m.cell_id, m.metric, r.hardware_id, r.hardware_label, r.lock_digest, "
        "r.folder, r.run_id, r.started_at, r.git_commit, m.value "
        "FROM metrics m JOIN runs r ON r.folder = m.folder WHERE r.dry_run = 0"
    )
    args: list[Any] = []
    if profile is not None:
        sql += " AND r.profile = ?"
        args.append(profile)
    sql += f" AND m.metric IN ({', '.join('?' * len(wanted))})"
    args += wanted
    patterns = [p.strip() for p in cells.split(",") if p.strip()] if cells else []
    groups: dict[tuple[Any, ...], list[Point]] = defaultdict(list)
    for row in conn.execute(sql, args):
        prof, cell_id, metric, hw_id, hw_label, lock, folder, run_id, started, commit, value = row
        if patterns and not any(fnmatch.fnmatchcase(cell_id, p) or p in cell_id for p in patterns):
            continue
        groups[(prof, cell_id, metric, hw_id, hw_label, lock)].append(
            Point(folder, run_id, started, commit, value)
        )
    if order == "commit":
        rank = _commit_rank(commit_positions(repo))

        def key(p: Point) -> tuple[Any, ...]:
            return (rank(p.git_commit), p.started_at, p.folder)
    else:

        def key(p: Point) -> tuple[Any, ...]:
            return (p.started_at, p.folder)

    out = []
    for (prof, cell_id, metric, hw_id, hw_label, lock), points in groups.items():
        points.sort(key=key)
        steps = detect_steps([p.value for p in points], METRICS[metric].step_model)
        out.append(
            Series(
                prof,
                cell_id,
                metric,
                hw_id,
                hw_label,
                lock,
                tuple(points),
                tuple(_named(s, points) for s in steps),
            )
        )
    metric_order = {m: i for i, m in enumerate(METRICS)}
    out.sort(
        key=lambda s: (
            s.profile,
            s.cell_id,
            metric_order[s.metric],
            s.hardware_label,
            s.lock_digest or "",
        )
    )
    return out


def _named(step: Step, points: list[Point]) -> StepFound:
    p = points[step.index]
    return StepFound(
        step.index, p.folder, p.run_id, p.git_commit, p.started_at, step.before, step.after
    )


@dataclass(frozen=True)
class RunRow:
    """One indexed run, as the dashboard and ``bench history`` list it."""

    folder: str
    run_id: str
    profile: str
    started_at: str
    finished_at: str | None
    git_commit: str | None
    dry_run: bool
    hardware_id: str
    hardware_label: str
    lock_digest: str | None
    environment_digest: str
    cells_ok: int
    cells_failed: int
    cells_other: int


def runs(conn: sqlite3.Connection, profile: str | None = None) -> list[RunRow]:
    """Indexed runs (of ``profile``), oldest first, with their cell counts."""
    sql = (
        "SELECT r.folder, r.run_id, r.profile, r.started_at, r.finished_at, r.git_commit, "
        "r.dry_run, r.hardware_id, r.hardware_label, r.lock_digest, r.environment, "
        "COALESCE(SUM(c.status = 'ok'), 0), COALESCE(SUM(c.status = 'failed'), 0), "
        "COALESCE(SUM(c.status NOT IN ('ok', 'failed')), 0) "
        "FROM runs r LEFT JOIN cells c ON c.folder = r.folder"
    )
    args: list[Any] = []
    if profile is not None:
        sql += " WHERE r.profile = ?"
        args.append(profile)
    sql += " GROUP BY r.folder ORDER BY r.started_at, r.folder"
    return [
        RunRow(*row[:6], bool(row[6]), *row[7:11], int(row[11]), int(row[12]), int(row[13]))
        for row in conn.execute(sql, args)
    ]


def profiles(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT profile FROM runs ORDER BY profile")]


def environment(conn: sqlite3.Connection, env_digest: str) -> dict[str, Any]:
    """The environment fingerprint stored under ``env_digest``."""
    row = conn.execute("SELECT json FROM environments WHERE digest = ?", (env_digest,)).fetchone()
    if row is None:
        raise InputError(f"history index: no environment {env_digest[:12]}")
    return json.loads(row[0])


def skipped(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(path, reason) of every file the index could not use."""
    return list(conn.execute("SELECT path, reason FROM skipped ORDER BY path"))
