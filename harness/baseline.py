"""Stored baselines: the accepted results of one run of a profile, to compare later runs with.

A baseline lives at ``reports/baselines/<profile>.json`` (versioned JSON, kind
``transfer-bench.baseline``, schema 1). It is written only by an explicit
``bench baseline accept RUN`` — never as a side effect of a run — and records the
run's environment fingerprint, so a comparison can tell whether throughput numbers
came from the same hardware, and the profile's tolerances at the time.

The per-cell records are the full :class:`~harness.results.CellResult` dicts, so the
report can show the baseline's numbers next to the run's without the run folder.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import jsonio, paths, results
from harness.errors import InputError, RunFailure
from harness.results import CellResult, RunInfo

BASELINE_KIND = "transfer-bench.baseline"
BASELINE_SCHEMA = 1


@dataclass(frozen=True)
class Baseline:
    """An accepted run of one profile: its cells, environment and tolerances."""

    profile: str
    run_id: str
    accepted_at: str  # ISO 8601, UTC
    environment: dict[str, Any]
    tolerances: dict[str, Any]
    manifest_digest: str
    git_commit: str | None
    cells: tuple[CellResult, ...] = ()
    forced: bool = False  # accepted with --force despite failed cells
    path: Path | None = field(default=None, compare=False)

    def cell(self, cell_id: str) -> CellResult | None:
        for c in self.cells:
            if c.cell_id == cell_id:
                return c
        return None


def default_path(profile: str) -> Path:
    """Where the baseline of ``profile`` is stored: ``reports/baselines/<profile>.json``."""
    return paths.baselines_dir() / f"{profile}.json"


def resolve_run_dir(run: str | Path) -> Path:
    """A run folder from a run id (under ``reports/runs/``) or a path; InputError if neither."""
    candidate = Path(run)
    if (candidate / "run.json").is_file():
        return candidate
    by_id = paths.runs_dir() / str(run)
    if (by_id / "run.json").is_file():
        return by_id
    raise InputError(
        f"run {str(run)!r}: no run.json at {candidate} nor at {by_id}; "
        f"pass a run id from {paths.runs_dir()} or the path of a run folder"
    )


def from_run(
    info: RunInfo, cells: list[CellResult], *, forced: bool = False, accepted_at: str | None = None
) -> Baseline:
    """The baseline a run would become (pure: writes nothing)."""
    return Baseline(
        profile=info.profile,
        run_id=info.run_id,
        accepted_at=accepted_at
        or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        environment=dict(info.environment),
        tolerances=dict(info.tolerances),
        manifest_digest=info.manifest_digest,
        git_commit=info.git_commit,
        cells=tuple(sorted(cells, key=lambda c: c.cell_id)),
        forced=forced,
    )


def to_dict(baseline: Baseline) -> dict[str, Any]:
    """JSON-ready data of a baseline (without its on-disk path)."""
    return {
        "profile": baseline.profile,
        "run_id": baseline.run_id,
        "accepted_at": baseline.accepted_at,
        "environment": baseline.environment,
        "tolerances": baseline.tolerances,
        "manifest_digest": baseline.manifest_digest,
        "git_commit": baseline.git_commit,
        "forced": baseline.forced,
        "cells": [results.to_dict(c) for c in baseline.cells],
    }


def write(baseline: Baseline, path: Path) -> Path:
    """Atomically write ``baseline`` to ``path`` (versioned JSON)."""
    jsonio.write_json(path, to_dict(baseline), kind=BASELINE_KIND, schema=BASELINE_SCHEMA)
    return path


def load(path: Path, *, profile: str | None = None) -> Baseline:
    """Read a baseline; refuse another kind/schema, a malformed record or another profile."""
    path = Path(path)
    data = jsonio.read_json(path, kind=BASELINE_KIND, schema=BASELINE_SCHEMA)
    required = ("profile", "run_id", "accepted_at", "environment", "tolerances", "cells")
    missing = [k for k in required if k not in data]
    if missing:
        raise InputError(f"{path}: baseline lacks field(s) {missing}; accept the baseline again")
    if not isinstance(data["cells"], list):
        raise InputError(f"{path}: 'cells' must be a list, got {type(data['cells']).__name__}")
    cells = tuple(
        results.cell_from_dict(c, f"{path}: cells[{i}]") for i, c in enumerate(data["cells"])
    )
    got = data["profile"]
    if profile is not None and got != profile:
        raise InputError(
            f"{path}: baseline is for profile {got!r}, the run is profile {profile!r}; "
            f"pass --baseline reports/baselines/{profile}.json or accept a {profile!r} baseline"
        )
    return Baseline(
        profile=str(got),
        run_id=str(data["run_id"]),
        accepted_at=str(data["accepted_at"]),
        environment=dict(data["environment"] or {}),
        tolerances=dict(data["tolerances"] or {}),
        manifest_digest=str(data.get("manifest_digest", "")),
        git_commit=data.get("git_commit"),
        cells=cells,
        forced=bool(data.get("forced", False)),
        path=path,
    )


def accept(
    run_dir: Path, *, force: bool = False, path: Path | None = None
) -> tuple[Path, Baseline]:
    """Make ``run_dir`` the baseline of its profile; refuse failed cells unless ``force``.

    An incomplete run (planned cells without a result) is refused too (InputError, exit 2).

    Refusal raises :class:`RunFailure` (exit 1) naming the failed cells, because a failed
    cell in a baseline would silently turn the next failure of that cell into "no change".
    """
    info = results.read_run(run_dir)
    cells = results.read_cells(run_dir)
    if not cells:
        raise InputError(f"{run_dir}: run {info.run_id!r} has no cell results; nothing to accept")
    missing = sorted(set(info.cell_ids) - {c.cell_id for c in cells})
    if missing and not force:
        raise InputError(
            f"run {info.run_id!r} is incomplete: {len(missing)} planned cell(s) have no result "
            f"({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}); "
            f"finish it with `bench all --resume` or pass --force"
        )
    failed = [c.cell_id for c in cells if c.status == "failed"]
    if failed and not force:
        raise RunFailure(
            f"run {info.run_id!r} has {len(failed)} failed cell(s) ({', '.join(failed)}); "
            "refusing to accept it as baseline; fix the cells or pass --force"
        )
    base = from_run(info, cells, forced=bool(failed or missing))
    target = Path(path) if path is not None else default_path(info.profile)
    write(base, target)
    return target, base
