"""Compare a run with its profile's baseline: per-cell deltas, noise-aware verdicts, exit code.

What counts as a regression (and, mirrored, an improvement):

* **Accuracy** (best validation accuracy, and test accuracy when both sides have it),
  in percentage points: ``delta = 100 * (run - baseline)``. The allowed drop is the
  profile's ``accuracy_points`` tolerance plus the seed noise: for cells repeated over
  seeds (same dataset/strategy/precision), half the range (max - min) of that metric
  across seeds on each side, summed. With one seed per cell the noise term is 0.
* **Throughput** (train, and inference when both sides have it), as the ratio
  ``run / baseline`` of the median images/s. The allowed relative drop is
  ``throughput_relative + (spread_baseline + spread_run) / 2`` where ``spread`` is
  :attr:`Throughput.relative_spread` (inter-quartile range of the rate / median): each
  median may sit anywhere in its own IQR band, so half of each band, summed, is what
  noise alone can move the ratio by. Regression when ``ratio < 1 - allowed``.
  Throughput is gated only when the hardware identity of the two environment
  fingerprints matches (:func:`harness.env.hardware_identity`); otherwise it is shown,
  not gated.

Cell verdicts: ``regression`` (a gated metric dropped beyond its allowance),
``improvement`` (one rose beyond it, none dropped), ``within noise``, ``missing`` (in the
baseline, not in the run), ``new`` (in the run, not in the baseline), ``failed`` (the
run's cell failed), ``not comparable`` (different config for the same cell id, a cell
skipped in the run, or not ok in the baseline). Exit 1 on any regression or failed
cell, else 0; bad input (baseline of another profile or schema, unreadable file) is an
InputError (exit 2).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness import baseline as baseline_mod
from harness import crossbackend, env, jsonio, results
from harness.baseline import Baseline
from harness.errors import EXIT_FAILURE, EXIT_OK, InputError
from harness.results import CellResult, RunInfo, Throughput

REGRESSION = "regression"
IMPROVEMENT = "improvement"
WITHIN_NOISE = "within noise"
MISSING = "missing"
NEW = "new"
FAILED = "failed"
NOT_COMPARABLE = "not comparable"
VERDICTS = (REGRESSION, FAILED, NOT_COMPARABLE, MISSING, NEW, IMPROVEMENT, WITHIN_NOISE)

COMPARISON_KIND = "transfer-bench.comparison"
COMPARISON_SCHEMA = 1

DEFAULT_TOLERANCES: dict[str, float] = {"accuracy_points": 2.0, "throughput_relative": 0.10}

# Without these on both sides the hardware is unknown, so throughput is not gated.
REQUIRED_HARDWARE_KEYS: tuple[str, ...] = ("cpu.model", "backend")

# Config keys (dotted) that describe where and how a cell ran rather than what it computed:
# paths on this machine, the devices seen, backend-specific switches. The hardware and
# backend themselves are judged from the environment fingerprint (env.hardware_identity).
IGNORED_CONFIG_KEYS: frozenset[str] = frozenset(
    {
        "run_id",
        "run_dir",
        "out_dir",
        "output_dir",
        "cell_id",
        "started_at",
        "weights_file",
        "devices",
        "determinism",
        "data_note",
        "optimizer.implementation",
    }
)

ACCURACY_METRICS: tuple[tuple[str, str], ...] = (
    ("best_val_accuracy", "best val accuracy"),
    ("test_accuracy", "test accuracy"),
)


@dataclass(frozen=True)
class MetricDelta:
    """One metric of one cell: both values, the change, the allowance and its verdict.

    For accuracy ``change`` is in points and ``allowed`` in points; for throughput
    ``change`` is the ratio run/baseline and ``allowed`` the tolerated relative drop.
    """

    metric: str  # "best val accuracy", "test accuracy", "train throughput", …
    unit: str  # "points" or "ratio"
    baseline: float
    run: float
    change: float
    allowed: float
    gated: bool
    verdict: str  # REGRESSION, IMPROVEMENT or WITHIN_NOISE (not gated: never REGRESSION)
    note: str = ""

    def describe(self) -> str:
        if self.unit == "points":
            text = f"{self.metric} {self.change:+.2f} pts (allowed ±{self.allowed:.2f})"
        else:
            text = (
                f"{self.metric} x{self.change:.3f} ({(self.change - 1) * 100:+.1f}%, "
                f"allowed ±{self.allowed * 100:.1f}%)"
            )
        return text if self.gated else f"{text} [not gated]"


@dataclass(frozen=True)
class CellComparison:
    """The verdict of one cell id and the metrics behind it."""

    cell_id: str
    verdict: str
    metrics: tuple[MetricDelta, ...] = ()
    reason: str = ""

    def metric(self, name: str) -> MetricDelta | None:
        return next((m for m in self.metrics if m.metric == name), None)


@dataclass(frozen=True)
class Comparison:
    """A whole run against a baseline."""

    run_id: str
    profile: str
    baseline_run_id: str
    baseline_path: str
    tolerances: dict[str, float]
    throughput_gated: bool
    hardware_differences: dict[str, tuple[Any, Any]]  # key -> (baseline, run)
    environment_differences: dict[str, tuple[Any, Any]]
    cells: tuple[CellComparison, ...] = field(default=())
    # What differs in what decides reproducibility (lock, packages, numpy SIMD/BLAS, CPU
    # numerics flags, threads, dirty checkout), in words: env.reproducibility_differences.
    reproducibility_differences: tuple[str, ...] = field(default=())
    # Backends side by side (harness.crossbackend): against a run folder as the baseline,
    # or between the backends of a run that has several.
    backends: tuple[crossbackend.Pair, ...] = field(default=())

    def count(self, verdict: str) -> int:
        return sum(1 for c in self.cells if c.verdict == verdict)

    @property
    def exit_code(self) -> int:
        bad = self.count(REGRESSION) + self.count(FAILED)
        return EXIT_FAILURE if bad else EXIT_OK

    def environment_line(self) -> str:
        """Says whether throughput was gated, and why not when it was not."""
        if self.throughput_gated:
            return "throughput gated: same hardware identity as the baseline; accuracy gated."
        diffs = "; ".join(
            f"{k}: {_short(b)} -> {_short(r)}" for k, (b, r) in self.hardware_differences.items()
        )
        return f"throughput NOT gated (hardware differs: {diffs}); accuracy still gated."

    def summary(self) -> str:
        counts = ", ".join(f"{self.count(v)} {v}" for v in VERDICTS if self.count(v))
        outcome = "FAIL" if self.exit_code else "OK"
        return (
            f"{outcome}: run {self.run_id} vs baseline {self.baseline_run_id} "
            f"(profile {self.profile}): {counts or 'no cells'}"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exit_code"] = self.exit_code
        data["summary"] = self.summary()
        data["environment_line"] = self.environment_line()
        data["counts"] = {v: self.count(v) for v in VERDICTS}
        return data


def _short(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict to dotted keys (``{"cpu": {"model": m}}`` -> ``{"cpu.model": m}``)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def hardware_differences(base_env: dict[str, Any], run_env: dict[str, Any]) -> dict[str, Any]:
    """The hardware-identity keys whose values differ between two fingerprints.

    A key of :data:`REQUIRED_HARDWARE_KEYS` that is unknown on either side counts as a
    difference: two fingerprints that both lack the CPU model do not prove the same machine.
    """
    ib, ir = env.hardware_identity(base_env), env.hardware_identity(run_env)
    keys = [*ib, *(k for k in ir if k not in ib)]
    out = {k: (ib.get(k), ir.get(k)) for k in keys if ib.get(k) != ir.get(k)}
    for k in REQUIRED_HARDWARE_KEYS:
        if ib.get(k) is None or ir.get(k) is None:
            out[k] = (ib.get(k) or "unknown", ir.get(k) or "unknown")
    return out


# Fingerprint keys too long to list one by one: summarised by reproducibility_differences.
SUMMARISED_ENV_PREFIXES: tuple[str, ...] = ("packages.", "git_dirty_paths")


def environment_differences(base_env: dict[str, Any], run_env: dict[str, Any]) -> dict[str, Any]:
    """Every fingerprint key whose value differs (for display; not used to gate), but the
    installed-package list, which :func:`harness.env.reproducibility_differences` sums up."""
    fb, fr = flatten(base_env), flatten(run_env)
    keys = [k for k in sorted(set(fb) | set(fr)) if not k.startswith(SUMMARISED_ENV_PREFIXES)]
    return {k: (fb.get(k), fr.get(k)) for k in keys if fb.get(k) != fr.get(k)}


def effective_tolerances(info: RunInfo, base: Baseline) -> dict[str, float]:
    """The run's profile tolerances, else the baseline's, else :data:`DEFAULT_TOLERANCES`."""
    out: dict[str, float] = {}
    for key, default in DEFAULT_TOLERANCES.items():
        value = info.tolerances.get(key, base.tolerances.get(key, default))
        out[key] = float(value)
    return out


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Dotted config keys that differ between two cells (ignoring where/when keys)."""

    def kept(key: str) -> bool:
        parts = key.split(".")
        return not any(".".join(parts[:i]) in IGNORED_CONFIG_KEYS for i in range(1, len(parts) + 1))

    fa = {k: v for k, v in flatten(a).items() if kept(k)}
    fb = {k: v for k, v in flatten(b).items() if kept(k)}
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def _group_key(cell: CellResult) -> tuple[str, str, str]:
    return (cell.dataset, cell.strategy, cell.precision)


def seed_noise(cells: Iterable[CellResult], attr: str) -> dict[tuple[str, str, str], float]:
    """Per dataset/strategy/precision: half the range of ``attr`` across seeds, in points."""
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for c in cells:
        value = getattr(c, attr)
        if c.ok and value is not None:
            groups[_group_key(c)].append(float(value))
    return {k: 50.0 * (max(v) - min(v)) for k, v in groups.items() if len(v) >= 2}


def _accuracy_delta(
    name: str, base: float, run: float, tolerance: float, noise: float
) -> MetricDelta:
    change = 100.0 * (run - base)
    allowed = tolerance + noise
    if change < -allowed:
        verdict = REGRESSION
    elif change > allowed:
        verdict = IMPROVEMENT
    else:
        verdict = WITHIN_NOISE
    note = f"seed noise {noise:.2f} pts" if noise else ""
    return MetricDelta(name, "points", base, run, change, allowed, True, verdict, note)


def _spread(t: Throughput) -> float:
    s = t.relative_spread
    return s if math.isfinite(s) else 0.0


def _throughput_delta(
    name: str, base: Throughput, run: Throughput, tolerance: float, gated: bool
) -> MetricDelta | str:
    """The throughput metric, or a string saying why the two are not comparable."""
    for attr in ("batch_size", "precision", "input"):
        if getattr(base, attr) != getattr(run, attr):
            return f"{name}: {attr} {getattr(base, attr)} -> {getattr(run, attr)}"
    if base.images_per_s <= 0 or run.images_per_s <= 0:
        return f"{name}: non-positive images/s ({base.images_per_s} -> {run.images_per_s})"
    ratio = run.images_per_s / base.images_per_s
    noise = (_spread(base) + _spread(run)) / 2.0
    allowed = tolerance + noise
    if ratio < 1.0 - allowed:
        verdict = REGRESSION if gated else WITHIN_NOISE
    elif ratio > 1.0 + allowed:
        verdict = IMPROVEMENT if gated else WITHIN_NOISE
    else:
        verdict = WITHIN_NOISE
    note = f"spread {_spread(base) * 100:.1f}% / {_spread(run) * 100:.1f}%"
    if not gated:
        note += "; not gated: different hardware"
    return MetricDelta(
        name, "ratio", base.images_per_s, run.images_per_s, ratio, allowed, gated, verdict, note
    )


def compare_cells(
    info: RunInfo,
    cells: list[CellResult],
    base: Baseline,
    *,
    baseline_path: Path | str = "",
) -> Comparison:
    """Compare a run's cells with a baseline (pure: reads and writes nothing)."""
    tol = effective_tolerances(info, base)
    hw = hardware_differences(base.environment, info.environment)
    gated = not hw
    run_by_id = {c.cell_id: c for c in cells}
    base_by_id = {c.cell_id: c for c in base.cells}
    noise = {
        (side, attr): seed_noise(side_cells, attr)
        for side, side_cells in (("base", base.cells), ("run", cells))
        for attr, _ in ACCURACY_METRICS
    }
    out: list[CellComparison] = []
    for cell_id in sorted(set(run_by_id) | set(base_by_id)):
        run_cell, base_cell = run_by_id.get(cell_id), base_by_id.get(cell_id)
        if run_cell is None:
            out.append(CellComparison(cell_id, MISSING, reason="in the baseline, not in the run"))
            continue
        if not run_cell.ok:
            error = (run_cell.error or "no error recorded").splitlines()[0][:160]
            if run_cell.status == "failed":
                out.append(CellComparison(cell_id, FAILED, reason=error))
            else:  # e.g. "skipped": a precision the device lacks; nothing ran, nothing broke
                out.append(
                    CellComparison(cell_id, NOT_COMPARABLE, reason=f"{run_cell.status}: {error}")
                )
            continue
        if base_cell is None:
            out.append(CellComparison(cell_id, NEW, reason="not in the baseline"))
            continue
        if not base_cell.ok:
            out.append(
                CellComparison(
                    cell_id, NOT_COMPARABLE, reason=f"{base_cell.status} in the baseline"
                )
            )
            continue
        diffs = config_differences(base_cell.config, run_cell.config)
        if diffs:
            shown = ", ".join(diffs[:4]) + (f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else "")
            out.append(CellComparison(cell_id, NOT_COMPARABLE, reason=f"config differs: {shown}"))
            continue
        metrics: list[MetricDelta] = []
        reasons: list[str] = []
        key = _group_key(run_cell)
        for attr, label in ACCURACY_METRICS:
            b, r = getattr(base_cell, attr), getattr(run_cell, attr)
            if b is None or r is None:
                continue
            n = noise[("base", attr)].get(key, 0.0) + noise[("run", attr)].get(key, 0.0)
            metrics.append(_accuracy_delta(label, float(b), float(r), tol["accuracy_points"], n))
        for attr, label in (
            ("train_throughput", "train throughput"),
            ("inference_throughput", "inference throughput"),
        ):
            b, r = getattr(base_cell, attr), getattr(run_cell, attr)
            if b is None or r is None:
                continue
            delta = _throughput_delta(label, b, r, tol["throughput_relative"], gated)
            if isinstance(delta, str):
                reasons.append(f"not comparable: {delta}")
            else:
                metrics.append(delta)
        verdicts = {m.verdict for m in metrics}
        if REGRESSION in verdicts:
            verdict = REGRESSION
        elif IMPROVEMENT in verdicts:
            verdict = IMPROVEMENT
        elif metrics:
            verdict = WITHIN_NOISE
        else:
            verdict = NOT_COMPARABLE
            reasons.append("no metric present on both sides")
        flagged = [m.describe() for m in metrics if m.verdict in (REGRESSION, IMPROVEMENT)]
        out.append(CellComparison(cell_id, verdict, tuple(metrics), "; ".join(flagged + reasons)))
    return Comparison(
        run_id=info.run_id,
        profile=info.profile,
        baseline_run_id=base.run_id,
        baseline_path=str(baseline_path or (base.path or "")),
        tolerances=tol,
        throughput_gated=gated,
        hardware_differences=hw,
        environment_differences=environment_differences(base.environment, info.environment),
        cells=tuple(out),
        reproducibility_differences=tuple(
            env.reproducibility_differences(base.environment, info.environment)
        ),
        backends=_side_by_side(info, cells, base),
    )


def _side_by_side(
    info: RunInfo, cells: list[CellResult], base: Baseline
) -> tuple[crossbackend.Pair, ...]:
    """Against a run folder, or a baseline of other backends: every cell beside its
    counterpart there; else the backends of this run beside each other (none with one)."""
    other_run = base.path is not None and Path(base.path).is_dir()
    if other_run or crossbackend.backends_of(cells) != crossbackend.backends_of(base.cells):
        return crossbackend.between_runs(
            cells, list(base.cells), run_id=info.run_id, base_run_id=base.run_id
        )
    return crossbackend.within_run(cells)


def find_baseline(profile: str, explicit: Path | None = None) -> Baseline | None:
    """The baseline to compare a run of ``profile`` with.

    ``explicit`` (``--baseline FILE``) must exist and be usable; it may also be a run folder
    (``--baseline OTHER_RUN``: that run's results, of any profile, as the baseline). Without
    it, the profile's stored baseline is used when there is one; None means there is none.
    """
    if explicit is not None and (Path(explicit) / "run.json").is_file():
        other = Path(explicit)
        base = baseline_mod.from_run(results.read_run(other), results.read_cells(other))
        return dataclasses.replace(base, path=other)
    path = Path(explicit) if explicit else baseline_mod.default_path(profile)
    if explicit is None and not path.is_file():
        return None
    return baseline_mod.load(path, profile=profile)


def compare_run(run_dir: Path, baseline_path: Path | None = None) -> Comparison:
    """Read a run folder and its baseline (default: the profile's) and compare them."""
    info = results.read_run(run_dir)
    base = find_baseline(info.profile, baseline_path)
    if base is None:
        raise InputError(
            f"no baseline for profile {info.profile!r} at "
            f"{baseline_mod.default_path(info.profile)}; accept one with "
            f"`bench baseline accept RUN` or pass --baseline FILE"
        )
    return compare_cells(info, results.read_cells(run_dir), base, baseline_path=base.path)


def _fmt_points(m: MetricDelta | None) -> str:
    return "" if m is None else f"{m.change:+.2f} (±{m.allowed:.2f})"


def _fmt_ratio(m: MetricDelta | None) -> str:
    if m is None:
        return ""
    text = f"x{m.change:.3f} (±{m.allowed * 100:.0f}%)"
    return text if m.gated else f"{text} ng"


def table_rows(comparison: Comparison) -> list[list[str]]:
    """One row per cell: id, verdict, accuracy deltas, throughput ratios, reason."""
    rows = []
    for c in comparison.cells:
        rows.append(
            [
                c.cell_id,
                c.verdict,
                _fmt_points(c.metric("best val accuracy")),
                _fmt_points(c.metric("test accuracy")),
                _fmt_ratio(c.metric("train throughput")),
                _fmt_ratio(c.metric("inference throughput")),
                c.reason,
            ]
        )
    return rows


TABLE_HEADERS = (
    "cell",
    "verdict",
    "best val acc Δ pts (allowed)",
    "test acc Δ pts (allowed)",
    "train img/s ratio (allowed)",
    "inference img/s ratio (allowed)",
    "notes",
)


def render_table(comparison: Comparison, tablefmt: str = "simple") -> str:
    """The verdict table (tabulate), then the environment line and the summary line."""
    table = tabulate(table_rows(comparison), headers=TABLE_HEADERS, tablefmt=tablefmt)
    legend = (
        f"tolerances: accuracy {comparison.tolerances['accuracy_points']:g} pts, "
        f"throughput {comparison.tolerances['throughput_relative'] * 100:g}% "
        "+ half of each side's relative IQR; 'ng' = not gated"
    )
    lines = [table, "", legend, comparison.environment_line()]
    if comparison.reproducibility_differences:
        lines.append(
            "differs from the baseline's environment (results may differ in the last bits):"
        )
        lines += [f"  {line}" for line in comparison.reproducibility_differences]
    if comparison.backends:
        tol = comparison.tolerances["accuracy_points"]
        lines += ["", "Side by side:", crossbackend.render(comparison.backends, tol, tablefmt), ""]
    return "\n".join([*lines, comparison.summary()])


def render_json(comparison: Comparison) -> str:
    """Machine-readable verdicts (versioned, like every JSON the harness emits)."""
    data = {**comparison.to_dict(), "kind": COMPARISON_KIND, "schema": COMPARISON_SCHEMA}
    return jsonio.dumps(data)
