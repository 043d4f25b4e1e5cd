"""Stored baselines: the accepted results of a profile, one per reproducibility key.

A profile may have several baselines, one per machine type / lock / backend / thread
setting (its *run key*, :mod:`harness.analysis.reprokey`), as asv keeps one results folder per
machine: ``reports/baselines/<profile>/<key id>.json`` (versioned JSON, kind
``transfer-bench.baseline``, schema 2). ``bench baseline accept RUN`` adds the one for the
run's key or replaces it, and nothing else writes one. A comparison picks the baseline of
the run's own key when there is one (the exact tier: bit-identical or ``changed``), else
another (the statistical tier), preferring the same hardware so throughput stays gated
(:func:`select`).

A baseline holds the run's environment fingerprint, its tolerances, the full
:class:`~harness.results.CellResult` of every cell (the report shows them beside the
run's), and the noise the statistical tier is calibrated by: the results of each cell's
**noise seeds** (the same cell under other seeds, ``noise``) and, inside each cell, its
**repeats** (``extra.repeats``: each a fresh process). ``bench baseline record`` runs a
profile with both (its ``[baseline]`` table) and accepts it.

Schema 1 (one file per profile, ``reports/baselines/<profile>.json``, no key and no noise)
is still read, and upgraded on reading: its key is computed from its fingerprint.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness import jsonio, paths, results, runfolder
from harness.analysis import reprokey
from harness.errors import InputError, RunFailure
from harness.results import CellResult, RunInfo

BASELINE_KIND = "transfer-bench.baseline"
BASELINE_SCHEMA = 2
NOISE_METRICS: tuple[str, ...] = ("best_val_accuracy", "test_accuracy")


@dataclass(frozen=True)
class NoiseSamples:
    """One cell's results under its noise seeds (its own seed's result is the cell)."""

    seeds: tuple[int, ...]
    best_val_accuracy: tuple[float, ...]
    test_accuracy: tuple[float, ...] = ()  # empty when the cell has no test split

    def values(self, metric: str) -> tuple[float, ...]:
        return tuple(getattr(self, metric))

    def to_dict(self) -> dict[str, Any]:
        return {
            "seeds": list(self.seeds),
            "best_val_accuracy": list(self.best_val_accuracy),
            "test_accuracy": list(self.test_accuracy),
        }


@dataclass(frozen=True)
class Baseline:
    """An accepted run of one profile on one reproducibility key."""

    profile: str
    run_id: str
    accepted_at: str  # ISO 8601, UTC
    environment: dict[str, Any]
    tolerances: dict[str, Any]
    manifest_digest: str
    git_commit: str | None
    cells: tuple[CellResult, ...] = ()
    forced: bool = False  # accepted with --force despite failed cells
    key: dict[str, Any] = field(default_factory=dict)
    noise: dict[str, NoiseSamples] = field(default_factory=dict)  # cell id -> noise seeds
    path: Path | None = field(default=None, compare=False)

    @property
    def key_id(self) -> str:
        return reprokey.key_id(self.key)

    def cell(self, cell_id: str) -> CellResult | None:
        for c in self.cells:
            if c.cell_id == cell_id:
                return c
        return None


def profile_dir(profile: str) -> Path:
    """Where the baselines of ``profile`` are stored: ``reports/baselines/<profile>/``."""
    return paths.baselines_dir() / profile


def path_for(profile: str, key_id: str) -> Path:
    """The file of the baseline of ``profile`` on the run key ``key_id``."""
    return profile_dir(profile) / f"{key_id}.json"


def legacy_path(profile: str) -> Path:
    """Schema 1's single baseline per profile, ``reports/baselines/<profile>.json``."""
    return paths.baselines_dir() / f"{profile}.json"


def default_path(profile: str) -> Path:
    """Where ``profile``'s baselines are looked for (the folder; for messages)."""
    return profile_dir(profile)


def stored(profile: str) -> list[Path]:
    """Every stored baseline file of ``profile`` (per-key files, then a schema-1 file)."""
    folder = profile_dir(profile)
    found = sorted(folder.glob("*.json")) if folder.is_dir() else []
    legacy = legacy_path(profile)
    return [*found, *([legacy] if legacy.is_file() else [])]


def noise_of(info: RunInfo, cells: list[CellResult]) -> dict[str, NoiseSamples]:
    """The noise-seed results of a run recorded by ``bench baseline record``, by main cell
    (run.json's ``matrix.baseline_recording.noise_cells`` says which cell is whose)."""
    recording = info.matrix.get("baseline_recording") or {}
    groups = recording.get("noise_cells") or {}
    by_id = {c.cell_id: c for c in cells}
    out: dict[str, NoiseSamples] = {}
    for main, noise_ids in groups.items():
        got = [by_id[n] for n in noise_ids if n in by_id and by_id[n].ok]
        if not got:
            continue
        tests = [c.test_accuracy for c in got]
        out[main] = NoiseSamples(
            seeds=tuple(c.seed for c in got),
            best_val_accuracy=tuple(float(c.best_val_accuracy or 0.0) for c in got),
            test_accuracy=tuple(float(t) for t in tests)
            if all(t is not None for t in tests)
            else (),
        )
    return out


def noise_cell_ids(info: RunInfo) -> set[str]:
    """The cells of a recorded run that are noise seeds, not cells of the profile."""
    recording = info.matrix.get("baseline_recording") or {}
    return {n for ids in (recording.get("noise_cells") or {}).values() for n in ids}


def from_run(
    info: RunInfo, cells: list[CellResult], *, forced: bool = False, accepted_at: str | None = None
) -> Baseline:
    """The baseline a run would become (pure: writes nothing); noise-seed cells go to
    ``noise``, not ``cells``."""
    noise_ids = noise_cell_ids(info)
    return Baseline(
        profile=info.profile,
        run_id=info.run_id,
        accepted_at=accepted_at
        or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        environment=dict(info.environment),
        tolerances=dict(info.tolerances),
        manifest_digest=info.manifest_digest,
        git_commit=info.git_commit,
        cells=tuple(sorted((c for c in cells if c.cell_id not in noise_ids), key=_by_id)),
        forced=forced,
        key=reprokey.run_key(info.environment),
        noise=noise_of(info, cells),
    )


def _by_id(cell: CellResult) -> str:
    return cell.cell_id


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
        "key": baseline.key,
        "key_id": baseline.key_id,
        "noise": {cid: n.to_dict() for cid, n in sorted(baseline.noise.items())},
        "cells": [results.to_dict(c) for c in baseline.cells],
    }


def write(baseline: Baseline, path: Path) -> Path:
    """Atomically write ``baseline`` to ``path`` (versioned JSON)."""
    BASELINE.write(path, to_dict(baseline))
    return path


def _upgrade_1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 -> 2: the run key from the recorded fingerprint, no noise samples."""
    environment = data.get("environment")
    key = reprokey.run_key(environment if isinstance(environment, dict) else {})
    return {**data, "key": key, "key_id": reprokey.key_id(key), "noise": {}}


UPGRADES: jsonio.Upgrades = {1: _upgrade_1}
BASELINE = jsonio.Record(BASELINE_KIND, BASELINE_SCHEMA, UPGRADES)

_TYPES: dict[str, tuple[type, ...]] = {
    "profile": (str,),
    "run_id": (str,),
    "accepted_at": (str,),
    "environment": (dict,),
    "tolerances": (dict,),
    "cells": (list,),
    "manifest_digest": (str,),
    "git_commit": (str, type(None)),
    "forced": (bool,),
    "key": (dict,),
    "key_id": (str,),
    "noise": (dict,),
}


def load(path: Path, *, profile: str | None = None) -> Baseline:
    """Read a baseline (schema 2, or 1 upgraded); refuse another kind/schema, a malformed
    record, a cell listed twice, a key id that does not match its key, or another profile.

    Every value is checked, the cells as :func:`harness.results.cell_from_dict` checks a
    run's (types, finite numbers, accuracies in [0, 1] …), so a baseline with ``NaN`` or a
    string where a number belongs is refused (exit 2) instead of switching the gate off.
    """
    path = Path(path)
    data = BASELINE.read(path)
    again = "; accept the baseline again (bench baseline accept RUN)"
    required = ("profile", "run_id", "accepted_at", "environment", "tolerances", "cells", "key")
    missing = [k for k in required if k not in data]
    if missing:
        raise InputError(f"{path}: baseline lacks field(s) {missing}{again}")
    for key, kinds in _TYPES.items():
        if key in data and not isinstance(data[key], kinds):
            wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise InputError(
                f"{path}: baseline field {key!r} must be {wanted}, got {type(data[key]).__name__}"
                f"{again}"
            )
    unknown = sorted(set(data) - set(_TYPES) - {"kind", "schema"})
    if unknown:
        raise InputError(f"{path}: unknown baseline field(s) {unknown}{again}")
    if "key_id" in data and data["key_id"] != reprokey.key_id(data["key"]):
        raise InputError(
            f"{path}: key_id {data['key_id']!r} does not match the key recorded with it "
            f"({reprokey.key_id(data['key'])}){again}"
        )
    results.check_tolerances(data["tolerances"], f"{path}: tolerances")
    try:
        cells = tuple(
            results.cell_from_dict(c, f"{path}: cells[{i}]") for i, c in enumerate(data["cells"])
        )
    except InputError as exc:
        raise InputError(f"{exc.message}{again}") from None
    seen: dict[str, int] = {}
    for i, c in enumerate(cells):
        if c.cell_id in seen:
            raise InputError(
                f"{path}: cell {c.cell_id!r} is listed twice (cells[{seen[c.cell_id]}] and "
                f"cells[{i}]): a baseline holds one result per cell{again}"
            )
        seen[c.cell_id] = i
    noise = _noise_from(data.get("noise") or {}, path, again)
    got = data["profile"]
    if profile is not None and got != profile:
        raise InputError(
            f"{path}: baseline is for profile {got!r}, the run is profile {profile!r}; "
            f"pass --baseline with a {profile!r} baseline or accept one"
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
        key=dict(data["key"]),
        noise=noise,
        path=path,
    )


def _noise_from(raw: dict[str, Any], path: Path, again: str) -> dict[str, NoiseSamples]:
    """The ``noise`` table, each list checked (integers for seeds, accuracies in [0, 1])."""
    out: dict[str, NoiseSamples] = {}
    for cid, entry in raw.items():
        where = f"{path}: noise[{cid!r}]"
        if not isinstance(entry, dict) or set(entry) - {"seeds", *NOISE_METRICS}:
            raise InputError(f"{where}: expected seeds, best_val_accuracy, test_accuracy{again}")
        seeds = entry.get("seeds", [])
        if not isinstance(seeds, list) or any(
            isinstance(s, bool) or not isinstance(s, int) for s in seeds
        ):
            raise InputError(f"{where}.seeds: expected a list of integers{again}")
        lists: dict[str, tuple[float, ...]] = {}
        for metric in NOISE_METRICS:
            values = entry.get(metric, [])
            ok = isinstance(values, list) and all(
                not isinstance(v, bool) and isinstance(v, (int, float)) and 0.0 <= v <= 1.0
                for v in values
            )
            if not ok or (values and len(values) != len(seeds)):
                raise InputError(
                    f"{where}.{metric}: expected one accuracy in [0, 1] per seed{again}"
                )
            lists[metric] = tuple(float(v) for v in values)
        out[cid] = NoiseSamples(tuple(seeds), **lists)
    return out


@dataclass(frozen=True)
class Selection:
    """The baseline a comparison uses, and how it was chosen (one line for the output)."""

    baseline: Baseline
    exact_key: bool  # the run's key is the baseline's: the exact tier applies
    note: str


def select(profile: str, run_environment: dict[str, Any]) -> Selection | None:
    """The stored baseline to compare a run of ``profile`` with (None: there is none).

    The one of the run's own key; else, for the statistical tier, one on the same hardware
    (so throughput stays gated), else the most recently accepted. A file that cannot be
    read is an InputError naming it: a broken baseline never quietly passes the gate.
    """
    files = stored(profile)
    if not files:
        return None
    loaded = [load(p, profile=profile) for p in files]
    want = reprokey.run_key(run_environment)
    want_id = reprokey.key_id(want)
    for base in loaded:
        if base.key_id == want_id and reprokey.complete(want):
            return Selection(base, True, f"baseline for this run key {want_id} ({base.path})")
    hardware = {k: want.get(k) for k in _HARDWARE_FIELDS}

    def rank(b: Baseline) -> tuple[bool, str]:
        same = {k: b.key.get(k) for k in _HARDWARE_FIELDS} == hardware
        return (same, b.accepted_at)

    best = max(loaded, key=rank)
    differs = "; ".join(reprokey.differences(best.key, want)) or "key incomplete"
    return Selection(
        best,
        False,
        f"no baseline for this run key {want_id}; statistical tier against {best.path} "
        f"(key {best.key_id}; differs: {differs})",
    )


_HARDWARE_FIELDS = ("cpu.model", "cpu.count", "gpu.name", "gpu.count", "backend", "keras")


def choose(
    profile: str, run_environment: dict[str, Any], given: Path | None = None
) -> Selection | None:
    """The baseline a run of ``profile`` is compared with: ``given`` (``--baseline``: a
    baseline file, or another run's folder, of any profile, whose results serve as the
    baseline), else :func:`select` among the stored ones (None: there is none)."""
    if given is None:
        return select(profile, run_environment)
    if runfolder.is_run(Path(given)):
        other = Path(given)
        base = replace(from_run(runfolder.read_run(other), runfolder.read_cells(other)), path=other)
        return _explicit(base, run_environment, f"run folder {other}")
    return _explicit(load(Path(given), profile=profile), run_environment, f"baseline {given}")


def _explicit(base: Baseline, run_environment: dict[str, Any], what: str) -> Selection:
    """A baseline the user named: exact tier when its key is the run's."""
    want = reprokey.run_key(run_environment)
    if base.key_id == reprokey.key_id(want) and reprokey.complete(want):
        return Selection(base, True, f"{what} (same run key {base.key_id})")
    differs = "; ".join(reprokey.differences(base.key, want)) or "key incomplete"
    return Selection(base, False, f"{what} is of key {base.key_id}: statistical tier ({differs})")


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
    """Make ``run_dir`` the baseline of its profile on its run key (adding or replacing the
    one for that key; ``path`` writes elsewhere instead).

    Refused (InputError, exit 2): a dry run, ever (its numbers come from a couple of steps
    on random stand-ins; as a baseline it would make every real run "not comparable", so
    the gate would be off); without ``force``, a partial run (an ``--only`` subset of its
    matrix, or planned cells without a result).

    Failed cells are refused with :class:`RunFailure` (exit 1) unless ``force``, because a
    failed cell in a baseline would silently turn the next failure of that cell into "no
    change".
    """
    info = runfolder.read_run(run_dir)
    if info.matrix.get("dry_run"):
        raise InputError(
            f"run {info.run_id!r} is a dry run (a couple of steps on random stand-ins): its "
            "numbers cannot be a baseline; accept a run made without --dry-run"
        )
    cells = runfolder.read_cells(run_dir)
    if not cells:
        raise InputError(f"{run_dir}: run {info.run_id!r} has no cell results; nothing to accept")
    planned = _planned_cell_ids(info, run_dir / runfolder.RUN_JSON)
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
    target = Path(path) if path is not None else path_for(info.profile, base.key_id)
    write(base, target)
    return target, replace(base, path=target)


def calibration(base: Baseline) -> str:
    """What the statistical tier can calibrate from this baseline, in words."""
    seeds = max((len(n.seeds) for n in base.noise.values()), default=0)
    repeats = max(
        (int((c.extra.get("repeats") or {}).get("repeats", 1)) for c in base.cells), default=1
    )
    if not seeds and repeats < 2:
        return (
            "no noise seeds and no repeats: the statistical tier falls back to fixed bands; "
            "record one with `bench baseline record`"
        )
    return f"{seeds} noise seed(s) and {repeats} repeat(s) per cell"


def _some(ids: list[str]) -> str:
    return ", ".join(ids[:3]) + (", …" if len(ids) > 3 else "")
