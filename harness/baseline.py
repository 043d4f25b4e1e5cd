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
    """Read a baseline; refuse another kind/schema, a malformed record or another profile.

    Every value is checked, the cells as :func:`harness.results.cell_from_dict` checks a
    run's (types, finite numbers, accuracies in [0, 1] …), so a baseline with ``NaN`` or a
    string where a number belongs is refused (exit 2) instead of switching the gate off.
    """
    path = Path(path)
    data = jsonio.read_json(path, kind=BASELINE_KIND, schema=BASELINE_SCHEMA)
    required = ("profile", "run_id", "accepted_at", "environment", "tolerances", "cells")
    missing = [k for k in required if k not in data]
    if missing:
        raise InputError(f"{path}: baseline lacks field(s) {missing}; accept the baseline again")
    types: dict[str, tuple[type, ...]] = {
        "profile": (str,),
        "run_id": (str,),
        "accepted_at": (str,),
        "environment": (dict,),
        "tolerances": (dict,),
        "cells": (list,),
        "manifest_digest": (str,),
        "git_commit": (str, type(None)),
        "forced": (bool,),
    }
    for key, kinds in types.items():
        if key in data and not isinstance(data[key], kinds):
            wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise InputError(
                f"{path}: baseline field {key!r} must be {wanted}, got {type(data[key]).__name__}"
                "; accept the baseline again"
            )
    unknown = sorted(set(data) - set(types) - {"kind", "schema"})
    if unknown:
        raise InputError(f"{path}: unknown baseline field(s) {unknown}; accept the baseline again")
    results.check_tolerances(data["tolerances"], f"{path}: tolerances")
    try:
        cells = tuple(
            results.cell_from_dict(c, f"{path}: cells[{i}]") for i, c in enumerate(data["cells"])
        )
    except InputError as exc:
        raise InputError(
            f"{exc.message}; accept a baseline again (bench baseline accept RUN)"
        ) from None
    got = data["profile"]
    if profile is not None and got != profile:
        raise InputError(
            f"{path}: baseline is for profile {got!r}, the run is profile {profile!r}; "
            f"pass --baseline reports/baselines/{profile}.json or accept a {profile!r} baseline"
        )
    return Baseline(
        profile=got,
        run_id=data["run_id"],
        accepted_at=data["accepted_at"],
        environment=dict(data["environment"]),
        tolerances=dict(data["tolerances"]),
        manifest_digest=data.get("manifest_digest", ""),
        git_commit=data.get("git_commit"),
        cells=cells,
        forced=data.get("forced", False),
        path=path,
    )


def _planned_cell_ids(info: RunInfo, where: Path) -> list[str] | None:
    """The cell ids of the run's whole matrix (from run.json), or None when not recorded."""
    from harness.matrix import CellSpec  # the matrix knows how a cell id is spelled

    cells = info.matrix.get("cells")
    if not isinstance(cells, list):
        return None
    try:
        return [CellSpec(**c).cell_id for c in cells]
    except TypeError as exc:
        raise InputError(f"{where}: run.json matrix.cells does not parse ({exc})") from None


def accept(
    run_dir: Path, *, force: bool = False, path: Path | None = None
) -> tuple[Path, Baseline]:
    """Make ``run_dir`` the baseline of its profile.

    Refused (InputError, exit 2): a dry run, ever (its numbers come from a couple of steps
    on random stand-ins; as a baseline it would make every real run "not comparable", so
    the gate would be off); without ``force``, a partial run (an ``--only`` subset of its
    matrix, or planned cells without a result).

    Failed cells are refused with :class:`RunFailure` (exit 1) unless ``force``, because a
    failed cell in a baseline would silently turn the next failure of that cell into "no
    change".
    """
    info = results.read_run(run_dir)
    if info.matrix.get("dry_run"):
        raise InputError(
            f"run {info.run_id!r} is a dry run (a couple of steps on random stand-ins): its "
            "numbers cannot be a baseline; accept a run made without --dry-run"
        )
    cells = results.read_cells(run_dir)
    if not cells:
        raise InputError(f"{run_dir}: run {info.run_id!r} has no cell results; nothing to accept")
    planned = _planned_cell_ids(info, run_dir / "run.json")
    left_out = sorted(set(planned or ()) - set(info.cell_ids))
    if left_out and not force:
        raise InputError(
            f"run {info.run_id!r} ran {len(info.cell_ids)} of the {len(planned or ())} cells of "
            f"profile {info.profile!r} (an --only subset; not run: {_some(left_out)}); run the "
            "whole matrix, or pass --force to accept the subset as the whole baseline"
        )
    missing = sorted(set(info.cell_ids) - {c.cell_id for c in cells})
    if missing and not force:
        raise InputError(
            f"run {info.run_id!r} is incomplete: {len(missing)} planned cell(s) have no result "
            f"({_some(missing)}); finish it with `bench all --resume` or pass --force"
        )
    failed = [c.cell_id for c in cells if c.status == "failed"]
    if failed and not force:
        raise RunFailure(
            f"run {info.run_id!r} has {len(failed)} failed cell(s) ({', '.join(failed)}); "
            "refusing to accept it as baseline; fix the cells or pass --force"
        )
    base = from_run(info, cells, forced=bool(failed or missing or left_out))
    target = Path(path) if path is not None else default_path(info.profile)
    write(base, target)
    return target, base


def _some(ids: list[str]) -> str:
    return ", ".join(ids[:3]) + (", …" if len(ids) > 3 else "")
