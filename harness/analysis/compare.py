"""Compare a run with a baseline: per-cell verdicts in two tiers, matrix-wide checks, exit code.

**Exact tier.** Where the run's reproducibility key is the baseline's
(:mod:`harness.analysis.reprokey`: machine type, lock, backend and its version, thread rule) and a
cell's config, op determinism and intra-op threads match too, the cell must reproduce its
baseline bit for bit: history, summary accuracies and weights digest. Any difference is
the verdict ``changed`` (the gate fails), naming the first epoch and metric that diverged
(:mod:`harness.analysis.exact`); a cell that reproduced is ``identical``.

**Statistical tier.** Elsewhere, accuracy and throughput are judged against allowances
calibrated by measured noise (:mod:`harness.analysis.noise`): accuracy by a quasi-binomial
model fitted to the baseline's noise seeds, throughput by the spread between processes in
the baseline's repeats and between sessions in this key's history. Each limit states the
false-alarm rate it implies; the rates are split over every test of the comparison
(Bonferroni) so the run's rate is the profile's ``false_alarm_rate``. A matrix-wide
accuracy check (Stouffer's combined z over the statistical-tier cells) catches a small
drop present in every cell.
Limits are symmetric: an improvement is as hard to earn as a regression.

Throughput is gated only between runs with the same hardware identity
(:func:`harness.env.hardware_identity`; and not with ``accuracy_only``); otherwise shown.

Cell verdicts: ``regression``, ``changed`` (exact tier), ``failed``, ``not comparable``
(another config for the same cell id, skipped in the run, not ok in the baseline),
``missing`` (in the baseline, not in the run), ``new`` (in the run, not in the
baseline), ``improvement``, ``identical`` (exact tier, throughput within noise),
``within noise``.

Exit code (:attr:`Comparison.exit_code`): 1 on a regression, a changed or failed cell or
a matrix-wide regression; else 4 when the gate compared fewer of the run's cells than the
profile's ``min_compared`` asks (a gate that compared nothing must not pass); else 0.
Bad input (a baseline of another profile or schema, an unreadable file) is an InputError
(exit 2).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness import env, jsonio
from harness.analysis import crossbackend, exact, noise, reprokey
from harness.analysis.baseline import Baseline, noise_cell_ids
from harness.errors import EXIT_FAILURE, EXIT_NOT_COMPARED, EXIT_OK
from harness.results import CellResult, RunInfo, Throughput

REGRESSION = "regression"
CHANGED = "changed"
IMPROVEMENT = "improvement"
IDENTICAL = "identical"
WITHIN_NOISE = "within noise"
MISSING = "missing"
NEW = "new"
FAILED = "failed"
NOT_COMPARABLE = "not comparable"
VERDICTS = (
    REGRESSION,
    CHANGED,
    FAILED,
    NOT_COMPARABLE,
    MISSING,
    NEW,
    IMPROVEMENT,
    IDENTICAL,
    WITHIN_NOISE,
)
COMPARED = (REGRESSION, CHANGED, IMPROVEMENT, IDENTICAL, WITHIN_NOISE)
FAILING = (REGRESSION, CHANGED, FAILED)

EXACT = "exact"
STATISTICAL = "statistical"

# The run's false-alarm rate is shared by three families of tests, then split evenly within
# each (Bonferroni): the few matrix-wide accuracy checks, which see a small drop in every
# cell, get as much as all per-cell accuracy tests together; throughput gets half.
ACCURACY, MATRIX, THROUGHPUT = "accuracy per cell", "accuracy matrix-wide", "throughput per cell"
FAMILY_SHARES: dict[str, float] = {ACCURACY: 1.0, MATRIX: 1.0, THROUGHPUT: 2.0}

COMPARISON_KIND = "transfer-bench.comparison"
COMPARISON_SCHEMA = 2

DEFAULT_TOLERANCES: dict[str, float] = {
    "accuracy_points": 2.0,
    "throughput_relative": 0.10,
    "false_alarm_rate": noise.DEFAULT_FALSE_ALARM,
    "min_compared": 1.0,
}

# Without these on both sides the hardware is unknown, so throughput is not gated.
REQUIRED_HARDWARE_KEYS: tuple[str, ...] = ("cpu.model", "backend")

ACCURACY_METRICS: tuple[tuple[str, str, str], ...] = (
    # attribute, label, the config field holding the evaluated split's size
    ("best_val_accuracy", "best val accuracy", "val_examples"),
    ("test_accuracy", "test accuracy", "test_examples"),
)
THROUGHPUT_METRICS: tuple[tuple[str, str, str], ...] = (
    ("train_throughput", "train throughput", "train"),
    ("inference_throughput", "inference throughput", "inference"),
)

flatten = reprokey.flatten
config_differences = reprokey.config_differences
IGNORED_CONFIG_KEYS = reprokey.IGNORED_CONFIG_KEYS


@dataclass(frozen=True)
class MetricDelta:
    """One metric of one cell: both values, the change, the allowance and its verdict.

    Accuracy: ``change`` in points against ``baseline`` (the baseline's value, or the mean
    of its seeds in the statistical tier), ``allowed`` in points. Throughput: ``change`` is
    the ratio run/baseline, ``allowed`` the relative drop tolerated, ``low``/``high`` the
    ratio bounds. ``alpha`` is the false-alarm rate the limit implies for this test (None:
    exact, or not calibrated).
    """

    metric: str  # "best val accuracy", "test accuracy", "train throughput", …
    unit: str  # "points" or "ratio"
    baseline: float
    run: float
    change: float
    allowed: float
    gated: bool
    verdict: str  # REGRESSION, IMPROVEMENT, WITHIN_NOISE, IDENTICAL or CHANGED
    note: str = ""
    low: float | None = None
    high: float | None = None
    alpha: float | None = None
    se: float | None = None

    def describe(self) -> str:
        if self.unit == "points":
            text = f"{self.metric} {self.change:+.2f} pts (allowed ±{self.allowed:.2f})"
        else:
            band = (
                f"x{self.low:.3f}-x{self.high:.3f}"
                if self.low is not None and self.high is not None
                else f"±{self.allowed * 100:.1f}%"
            )
            pct = (self.change - 1) * 100
            text = f"{self.metric} x{self.change:.3f} ({pct:+.1f}%, allowed {band})"
        return text if self.gated else f"{text} [not gated]"


@dataclass(frozen=True)
class CellComparison:
    """The verdict of one cell id, its tier and the metrics behind it."""

    cell_id: str
    verdict: str
    metrics: tuple[MetricDelta, ...] = ()
    reason: str = ""
    tier: str = ""  # EXACT, STATISTICAL, or "" where nothing was compared
    divergence: str = ""  # exact tier: the first value that differs
    run_ok: bool = False  # the run's cell ran and produced a result (the gate should judge it)

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
    # What differs in what decides reproducibility (lock, packages the cells import, numpy
    # SIMD/BLAS, CPU numerics flags, threads, dirty checkout), in words.
    reproducibility_differences: tuple[str, ...] = field(default=())
    # Backends side by side (harness.analysis.crossbackend): against a run folder as the baseline,
    # or between the backends of a run that has several.
    backends: tuple[crossbackend.Pair, ...] = field(default=())
    tier: str = STATISTICAL  # EXACT when the run key is the baseline's
    run_key_id: str = ""
    baseline_key_id: str = ""
    key_differences: tuple[str, ...] = ()
    selection: str = ""  # how the baseline was chosen
    noise_models: tuple[str, ...] = ()  # what calibrated the statistical tier, in words
    matrix_checks: tuple[noise.Combined, ...] = ()
    tests: int = 0  # statistical tests the false-alarm rate is split over
    throughput_note: str = ""

    def count(self, verdict: str) -> int:
        return sum(1 for c in self.cells if c.verdict == verdict)

    @property
    def ok_run_cells(self) -> int:
        """The run's cells that ran and produced results (what the gate should judge)."""
        return sum(1 for c in self.cells if c.run_ok)

    @property
    def compared(self) -> int:
        return sum(1 for c in self.cells if c.verdict in COMPARED)

    @property
    def required(self) -> int:
        """How many cells the gate must compare: ``min_compared`` of the run's ok cells, and
        at least one (a run that measured nothing has nothing to pass with)."""
        judged = self.ok_run_cells
        return max(1, math.ceil(self.tolerances.get("min_compared", 1.0) * judged - 1e-9))

    @property
    def matrix_regression(self) -> bool:
        return any(m.verdict == REGRESSION for m in self.matrix_checks)

    @property
    def incomplete(self) -> bool:
        return self.compared < self.required

    @property
    def exit_code(self) -> int:
        if any(self.count(v) for v in FAILING) or self.matrix_regression:
            return EXIT_FAILURE
        if self.incomplete:
            return EXIT_NOT_COMPARED
        return EXIT_OK

    def environment_line(self) -> str:
        """Says whether throughput was gated, and why not when it was not."""
        if self.throughput_note:
            return f"throughput NOT gated ({self.throughput_note}); accuracy still gated."
        if self.throughput_gated:
            return "throughput gated: same hardware identity as the baseline; accuracy gated."
        diffs = "; ".join(
            f"{k}: {_short(b)} -> {_short(r)}" for k, (b, r) in self.hardware_differences.items()
        )
        return f"throughput NOT gated (hardware differs: {diffs}); accuracy still gated."

    def tier_line(self) -> str:
        """Which tier applied and why, in one line."""
        exact_cells = sum(1 for c in self.cells if c.tier == EXACT)
        stat_cells = sum(1 for c in self.cells if c.tier == STATISTICAL)
        head = (
            f"exact tier: run key {self.run_key_id} = baseline key; {exact_cells} cell(s) "
            "must reproduce bit for bit"
            if self.tier == EXACT
            else f"statistical tier: run key {self.run_key_id} != baseline key "
            f"{self.baseline_key_id} ({'; '.join(self.key_differences) or 'key incomplete'})"
        )
        if self.tier == EXACT and stat_cells:
            head += f"; {stat_cells} cell(s) statistical (see notes)"
        return head

    def gate_line(self) -> str | None:
        """Why the gate cannot pass for lack of comparison (None: enough was compared)."""
        if not self.incomplete:
            return None
        fields = Counter(
            f for c in self.cells if c.verdict == NOT_COMPARABLE for f in _config_fields(c.reason)
        )
        why = ""
        if fields:
            named = ", ".join(f"{f} ({n} cells)" for f, n in fields.most_common(4))
            why = f"; config differs from the baseline in: {named}"
        others = Counter(
            c.verdict for c in self.cells if c.verdict not in COMPARED and c.verdict != MISSING
        )
        listed = ", ".join(f"{n} {v}" for v, n in others.items())
        return (
            f"GATE OFF: {self.compared} of {self.ok_run_cells} cells compared, "
            f"{self.required} required ({listed}){why}; run the profile the baseline was "
            "accepted from, or accept a new baseline (bench baseline accept RUN)"
        )

    def summary(self) -> str:
        counts = ", ".join(f"{self.count(v)} {v}" for v in VERDICTS if self.count(v))
        outcome = {EXIT_OK: "OK", EXIT_FAILURE: "FAIL", EXIT_NOT_COMPARED: "NOT COMPARED"}[
            self.exit_code
        ]
        matrix = [m.verdict for m in self.matrix_checks if m.verdict != WITHIN_NOISE]
        extra = f"; matrix-wide: {', '.join(matrix)}" if matrix else ""
        return (
            f"{outcome}: run {self.run_id} vs baseline {self.baseline_run_id} "
            f"(profile {self.profile}, {self.tier} tier): {counts or 'no cells'}{extra}"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exit_code"] = self.exit_code
        data["summary"] = self.summary()
        data["environment_line"] = self.environment_line()
        data["tier_line"] = self.tier_line()
        data["gate_line"] = self.gate_line()
        data["counts"] = {v: self.count(v) for v in VERDICTS}
        data["compared"] = self.compared
        data["required"] = self.required
        data["matrix_checks"] = [
            {**asdict(m), "verdict": m.verdict, "line": m.describe()} for m in self.matrix_checks
        ]
        return data


def _config_fields(reason: str) -> list[str]:
    if not reason.startswith("config differs: "):
        return []
    text = reason[len("config differs: ") :].split(" (+", 1)[0]
    return [part.split(" ", 1)[0] for part in text.split(", ") if part]


def _short(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


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


def _group_key(cell: CellResult) -> tuple[str, str, str]:
    return (cell.dataset, cell.strategy, cell.precision)


def seed_noise(cells: Iterable[CellResult], attr: str) -> dict[tuple[str, str, str], float]:
    """Per dataset/strategy/precision: half the range of ``attr`` across seeds, in points
    (the matrix's own seeds; shown with the fixed band when no noise seeds were recorded)."""
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for c in cells:
        value = getattr(c, attr)
        if c.ok and value is not None:
            groups[_group_key(c)].append(float(value))
    return {k: 50.0 * (max(v) - min(v)) for k, v in groups.items() if len(v) >= 2}


def _seed_spreads(
    base_cells: Iterable[CellResult], run_cells: Iterable[CellResult]
) -> dict[tuple[str, tuple[str, str, str]], float]:
    """(metric, group) -> half range across the matrix's seeds, baseline's plus run's."""
    base_cells, run_cells = list(base_cells), list(run_cells)
    out = {}
    for attr, _, _ in ACCURACY_METRICS:
        b, r = seed_noise(base_cells, attr), seed_noise(run_cells, attr)
        for k in set(b) | set(r):
            out[(attr, k)] = b.get(k, 0.0) + r.get(k, 0.0)
    return out


def _split_size(cell: CellResult, field_name: str) -> int | None:
    effective = cell.config.get("effective") if isinstance(cell.config, dict) else None
    value = effective.get(field_name) if isinstance(effective, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _seed_values(base: Baseline, cell: CellResult, attr: str) -> list[float]:
    """The baseline's samples of one cell's accuracy: its own result and its noise seeds."""
    own = getattr(cell, attr)
    values = [float(own)] if own is not None else []
    samples = base.noise.get(cell.cell_id)
    if samples is not None and own is not None:
        values += list(samples.values(attr))
    return values


def _rates(t: Throughput, cell: CellResult, phase: str) -> list[float]:
    """A cell's throughput samples: each repeat's images/s, else its one figure."""
    repeats = cell.extra.get("repeats") if isinstance(cell.extra, dict) else None
    if isinstance(repeats, dict):
        block = repeats if phase == "train" else repeats.get("inference")
        rates = block.get("images_per_s") if isinstance(block, dict) else None
        if isinstance(rates, list) and len(rates) >= 1 and all(r > 0 for r in rates):
            return [float(r) for r in rates]
    return [t.images_per_s]


@dataclass(frozen=True)
class _Context:
    """What every cell's comparison shares: tolerances, noise models and the test budget."""

    tol: dict[str, float]
    base: Baseline
    exact_key: bool
    gated: bool
    alphas: dict[str, float]  # per test, by family (ACCURACY, MATRIX, THROUGHPUT)
    accuracy_models: dict[str, noise.AccuracyModel]
    throughput_models: dict[str, noise.ThroughputModel]
    seed_spread: dict[tuple[str, tuple[str, str, str]], float]


def compare_cells(
    info: RunInfo,
    cells: list[CellResult],
    base: Baseline,
    *,
    baseline_path: Path | str = "",
    exact_key: bool | None = None,
    selection: str = "",
    history: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    accuracy_only: bool = False,
) -> Comparison:
    """Compare a run's cells with a baseline (pure: reads and writes nothing).

    ``exact_key``: whether the run's key is the baseline's (default: computed from both
    fingerprints). ``history``: cell id -> phase ("train"/"inference") -> images/s of recent
    runs on this run key (:mod:`harness.history`), for the throughput noise.
    ``accuracy_only``: show throughput, gate nothing on it (runs measured under load).
    """
    tol = effective_tolerances(info, base)
    # A run made by `bench baseline record` also holds its noise-seed cells: calibration,
    # not cells of the matrix, so not judged (nor counted as "new").
    noise_ids = noise_cell_ids(info)
    cells = [c for c in cells if c.cell_id not in noise_ids]
    run_key = reprokey.run_key(info.environment)
    if exact_key is None:
        exact_key = reprokey.key_id(run_key) == base.key_id and reprokey.complete(run_key)
    hw = hardware_differences(base.environment, info.environment)
    gated = not hw and not accuracy_only
    plan = _plan(cells, base, exact_key)
    ctx = _Context(
        tol=tol,
        base=base,
        exact_key=exact_key,
        gated=gated,
        alphas=noise.split(tol["false_alarm_rate"], plan.families(gated), FAMILY_SHARES),
        accuracy_models=_accuracy_models(base),
        throughput_models=_throughput_models(base, history or {}),
        seed_spread=_seed_spreads(base.cells, cells),
    )
    out = [_compare_one(cid, plan, ctx) for cid in plan.ids]
    checks = _matrix_checks(out, ctx)
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
            env.reproducibility_differences(
                base.environment, info.environment, imported=_imported(base.cells, cells)
            )
        ),
        backends=_side_by_side(info, cells, base),
        tier=EXACT if exact_key else STATISTICAL,
        run_key_id=reprokey.key_id(run_key),
        baseline_key_id=base.key_id,
        key_differences=tuple(reprokey.differences(base.key, run_key)),
        selection=selection,
        noise_models=_model_lines(ctx, plan),
        matrix_checks=checks,
        tests=sum(plan.families(gated).values()),
        throughput_note="--accuracy-only: measured under load" if accuracy_only and not hw else "",
    )


def _imported(*sides: Iterable[CellResult]) -> set[str] | None:
    """The distributions the cells imported (recorded per cell), None if none recorded."""
    found: set[str] = set()
    for side in sides:
        for c in side:
            process = c.extra.get("process") if isinstance(c.extra, dict) else None
            imports = process.get("imports") if isinstance(process, dict) else None
            if isinstance(imports, dict):
                found |= set(imports)
    return found or None


@dataclass(frozen=True)
class _Plan:
    """Which cell ids meet which baseline cell, and in which tier (decided before any test,
    so the false-alarm rate can be split over the tests that will be made)."""

    ids: tuple[str, ...]
    run: dict[str, CellResult]
    base: dict[str, CellResult]
    exact_problem: dict[str, str | None]  # per comparable cell: None = exact tier

    def comparable(self, cid: str) -> bool:
        r, b = self.run.get(cid), self.base.get(cid)
        return (
            r is not None
            and b is not None
            and r.ok
            and b.ok
            and not reprokey.cell_config_differences(b, r)
        )

    def families(self, gated: bool) -> dict[str, int]:
        """How many statistical tests each family will make (for the false-alarm split)."""
        counts = {ACCURACY: 0, MATRIX: 0, THROUGHPUT: 0}
        per_metric: Counter[str] = Counter()
        for cid in self.ids:
            if not self.comparable(cid):
                continue
            r, b = self.run[cid], self.base[cid]
            if self.exact_problem.get(cid) is not None:
                for a, _, _ in ACCURACY_METRICS:
                    if getattr(r, a) is not None and getattr(b, a) is not None:
                        counts[ACCURACY] += 1
                        per_metric[a] += 1
            if gated:
                counts[THROUGHPUT] += sum(
                    1 for a, _, _ in THROUGHPUT_METRICS if getattr(r, a) and getattr(b, a)
                )
        counts[MATRIX] = sum(1 for n in per_metric.values() if n >= 2)
        return counts


def _plan(cells: list[CellResult], base: Baseline, exact_key: bool) -> _Plan:
    run_by_id = {c.cell_id: c for c in cells}
    base_by_id = {c.cell_id: c for c in base.cells}
    ids = tuple(sorted(set(run_by_id) | set(base_by_id)))
    problems: dict[str, str | None] = {}
    for cid in ids:
        r, b = run_by_id.get(cid), base_by_id.get(cid)
        if r is None or b is None:
            continue
        problems[cid] = (
            reprokey.cell_exact_problem(b, r)
            if exact_key
            else "run key differs from the baseline's"
        )
    return _Plan(ids, run_by_id, base_by_id, problems)


def _accuracy_models(base: Baseline) -> dict[str, noise.AccuracyModel]:
    out = {}
    for attr, _, size_field in ACCURACY_METRICS:
        samples = []
        for c in base.cells:
            n = _split_size(c, size_field)
            values = _seed_values(base, c, attr) if c.ok else []
            if n and values:
                samples.append((values, n))
        out[attr] = noise.accuracy_model(attr.replace("_", " "), samples)
    return out


def _throughput_models(
    base: Baseline, history: Mapping[str, Mapping[str, Sequence[float]]]
) -> dict[str, noise.ThroughputModel]:
    out = {}
    for attr, _, phase in THROUGHPUT_METRICS:
        repeat_groups = [
            _rates(getattr(c, attr), c, phase) for c in base.cells if c.ok and getattr(c, attr)
        ]
        history_groups = [list(h.get(phase, ())) for h in history.values()]
        out[phase] = noise.throughput_model(repeat_groups, history_groups, phase)
    return out


def _model_lines(ctx: _Context, plan: _Plan) -> tuple[str, ...]:
    statistical = any(p is not None for p in plan.exact_problem.values())
    lines = []
    if statistical:
        lines += [m.describe() for m in ctx.accuracy_models.values()]
    if ctx.gated:
        lines += [m.describe() for m in ctx.throughput_models.values()]
    counts = plan.families(ctx.gated)
    split = ", ".join(
        f"{counts[f]} {f} at {ctx.alphas[f] * 100:.2g} %" for f in counts if counts[f]
    )
    lines.append(
        f"false alarms: {ctx.tol['false_alarm_rate'] * 100:g} % per run, split over "
        f"{split or 'no statistical test'}; minimum effect {ctx.tol['accuracy_points']:g} pts, "
        f"{ctx.tol['throughput_relative'] * 100:g} %"
    )
    return tuple(lines)


def _compare_one(cid: str, plan: _Plan, ctx: _Context) -> CellComparison:
    found = _judge(cid, plan, ctx)
    run_cell = plan.run.get(cid)
    return replace(found, run_ok=run_cell is not None and run_cell.ok)


def _judge(cid: str, plan: _Plan, ctx: _Context) -> CellComparison:
    """A cell's verdict: why it cannot be compared (:func:`_unjudged`), else from its
    metrics, in its tier (exact: bit for bit; statistical: against the noise)."""
    run_cell, base_cell = plan.run.get(cid), plan.base.get(cid)
    unjudged = _unjudged(cid, run_cell, base_cell)
    if unjudged is not None:
        return unjudged
    assert run_cell is not None and base_cell is not None
    problem = plan.exact_problem.get(cid)
    reasons: list[str] = []
    if problem is None:
        metrics, divergence = (
            _exact_metrics(base_cell, run_cell),
            exact.first_divergence(base_cell, run_cell),
        )
        tier = EXACT
    else:
        metrics, divergence, tier = _accuracy_metrics(base_cell, run_cell, ctx), None, STATISTICAL
        if ctx.exact_key:
            reasons.append(f"statistical: {problem}")
    for attr, label, phase in THROUGHPUT_METRICS:
        b, r = getattr(base_cell, attr), getattr(run_cell, attr)
        if b is None or r is None:
            continue
        delta = _throughput_delta(label, b, r, base_cell, run_cell, phase, ctx)
        if isinstance(delta, str):
            reasons.append(f"not comparable: {delta}")
        else:
            metrics.append(delta)
    verdicts = {m.verdict for m in metrics}
    if divergence is not None:
        verdict = CHANGED
    elif REGRESSION in verdicts:
        verdict = REGRESSION
    elif IMPROVEMENT in verdicts:
        verdict = IMPROVEMENT
    elif tier == EXACT:
        verdict = IDENTICAL
    elif metrics:
        verdict = WITHIN_NOISE
    else:
        verdict = NOT_COMPARABLE
        reasons.append("no metric present on both sides")
    flagged = [m.describe() for m in metrics if m.verdict in (REGRESSION, IMPROVEMENT, CHANGED)]
    div_text = divergence.describe() if divergence is not None else ""
    return CellComparison(
        cid,
        verdict,
        tuple(metrics),
        "; ".join(([div_text] if div_text else []) + flagged + reasons),
        tier,
        div_text,
    )


def _unjudged(
    cid: str, run_cell: CellResult | None, base_cell: CellResult | None
) -> CellComparison | None:
    """The verdict of a cell that has nothing to compare (missing, failed, new, a config
    that differs), or None when both sides ran the same config."""
    if run_cell is None:
        return CellComparison(cid, MISSING, reason="in the baseline, not in the run")
    if not run_cell.ok:
        error = (run_cell.error or "no error recorded").splitlines()[0][:160]
        if run_cell.status == "failed":
            return CellComparison(cid, FAILED, reason=error)
        # e.g. "skipped": a precision the device lacks; nothing ran, nothing broke
        return CellComparison(cid, NOT_COMPARABLE, reason=f"{run_cell.status}: {error}")
    if base_cell is None:
        return CellComparison(cid, NEW, reason="not in the baseline")
    if not base_cell.ok:
        return CellComparison(cid, NOT_COMPARABLE, reason=f"{base_cell.status} in the baseline")
    diffs = reprokey.cell_config_differences(base_cell, run_cell)
    if diffs:
        shown = ", ".join(
            f"{k} {_short(flatten(base_cell.config).get(k))} -> "
            f"{_short(flatten(run_cell.config).get(k))}"
            for k in diffs[:4]
        ) + (f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else "")
        return CellComparison(cid, NOT_COMPARABLE, reason=f"config differs: {shown}")
    return None


def _exact_metrics(base: CellResult, run: CellResult) -> list[MetricDelta]:
    out = []
    for attr, label, _ in ACCURACY_METRICS:
        b, r = getattr(base, attr), getattr(run, attr)
        if b is None or r is None:
            continue
        same = b == r
        out.append(
            MetricDelta(
                label, "points", float(b), float(r), 100.0 * (float(r) - float(b)), 0.0, True,
                IDENTICAL if same else CHANGED, "exact: must be bit-identical",
            )
        )  # fmt: skip
    return out


def _accuracy_metrics(base: CellResult, run: CellResult, ctx: _Context) -> list[MetricDelta]:
    out = []
    for attr, label, size_field in ACCURACY_METRICS:
        b, r = getattr(base, attr), getattr(run, attr)
        if b is None or r is None:
            continue
        values = _seed_values(ctx.base, base, attr)
        n = _split_size(run, size_field) or _split_size(base, size_field)
        model = ctx.accuracy_models[attr]
        if n is None:  # an older result without split sizes: the profile's fixed band
            spread = ctx.seed_spread.get((attr, _group_key(run)), 0.0)
            allowed = ctx.tol["accuracy_points"] + spread
            change = 100.0 * (float(r) - float(b))
            out.append(
                MetricDelta(
                    label, "points", float(b), float(r), change, allowed, True,
                    _verdict(change, allowed), "fixed band: split size not recorded",
                )
            )  # fmt: skip
            continue
        allow = noise.accuracy_allowance(
            model, values, n, ctx.alphas[ACCURACY], ctx.tol["accuracy_points"]
        )
        change = 100.0 * float(r) - allow.center
        note = (
            f"vs mean of {len(values)} seed(s); se {allow.se:.2f} pts; "
            f"false alarms {allow.alpha * 100:.2g} %"
            + (" (minimum effect decides)" if allow.floor_binding else "")
        )
        out.append(
            MetricDelta(
                label, "points", allow.center / 100.0, float(r), change, allow.limit, True,
                _verdict(change, allow.limit), note, alpha=allow.alpha, se=allow.se,
            )
        )  # fmt: skip
    return out


def _verdict(change: float, allowed: float) -> str:
    if change < -allowed:
        return REGRESSION
    if change > allowed:
        return IMPROVEMENT
    return WITHIN_NOISE


def _spread(t: Throughput) -> float:
    s = t.relative_spread
    return s if math.isfinite(s) else 0.0


def _throughput_delta(
    name: str,
    base: Throughput,
    run: Throughput,
    base_cell: CellResult,
    run_cell: CellResult,
    phase: str,
    ctx: _Context,
) -> MetricDelta | str:
    """The throughput metric, or a string saying why the two are not comparable."""
    for attr in ("batch_size", "precision", "input"):
        if getattr(base, attr) != getattr(run, attr):
            return f"{name}: {attr} {getattr(base, attr)} -> {getattr(run, attr)}"
    if base.images_per_s <= 0 or run.images_per_s <= 0:
        return f"{name}: non-positive images/s ({base.images_per_s} -> {run.images_per_s})"
    model = ctx.throughput_models[phase]
    base_rates, run_rates = _rates(base, base_cell, phase), _rates(run, run_cell, phase)
    shared = bool((run_cell.extra.get("placement") or {}).get("shared"))
    gated = ctx.gated and not shared
    why_not = "" if gated else ("; not gated: measured while sharing the CPU" if shared else "")
    if not model.measured:  # no repeats, no history: the fixed band widened by the IQRs
        ratio = run.images_per_s / base.images_per_s
        allowed = ctx.tol["throughput_relative"] + (_spread(base) + _spread(run)) / 2.0
        verdict = _verdict(ratio - 1.0, allowed) if gated else WITHIN_NOISE
        note = (
            f"fixed band (noise not measured); spread {_spread(base) * 100:.1f}% / "
            f"{_spread(run) * 100:.1f}%{why_not}"
        )
        return MetricDelta(
            name, "ratio", base.images_per_s, run.images_per_s, ratio, allowed, gated, verdict,
            note, low=1.0 - allowed, high=1.0 + allowed,
        )  # fmt: skip
    allow = noise.throughput_allowance(
        model, base_rates, run_rates, ctx.alphas[THROUGHPUT], ctx.tol["throughput_relative"]
    )
    log_run = statistics.fmean(math.log(x) for x in run_rates)
    change = log_run - allow.center
    ratio = math.exp(change)
    verdict = _verdict(change, allow.limit) if gated else WITHIN_NOISE
    note = (
        f"{len(base_rates)} vs {len(run_rates)} process(es); se {allow.se * 100:.1f}%; "
        f"false alarms {allow.alpha * 100:.2g} %"
        + (" (minimum effect decides)" if allow.floor_binding else "")
        + why_not
    )
    return MetricDelta(
        name, "ratio", math.exp(allow.center), math.exp(log_run), ratio,
        1.0 - math.exp(-allow.limit), gated, verdict, note,
        low=math.exp(-allow.limit), high=math.exp(allow.limit), alpha=allow.alpha, se=allow.se,
    )  # fmt: skip


def _matrix_checks(out: list[CellComparison], ctx: _Context) -> tuple[noise.Combined, ...]:
    """Stouffer's combined z per accuracy metric over the statistical-tier cells."""
    checks = []
    for attr, label, _ in ACCURACY_METRICS:
        pairs = [
            (m.change, m.se)
            for c in out
            if c.tier == STATISTICAL
            for m in c.metrics
            if m.metric == label and m.se
        ]
        df = ctx.accuracy_models[attr].df or math.inf
        combined = noise.combined(label, pairs, ctx.alphas[MATRIX], df)
        if combined is not None:
            checks.append(combined)
    return tuple(checks)


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


def _fmt_points(m: MetricDelta | None) -> str:
    if m is None:
        return ""
    if m.verdict in (IDENTICAL, CHANGED):
        return "=" if m.verdict == IDENTICAL else f"{m.change:+.2f} (exact)"
    return f"{m.change:+.2f} (±{m.allowed:.2f})"


def _fmt_ratio(m: MetricDelta | None) -> str:
    if m is None:
        return ""
    if m.low is not None and m.high is not None:
        text = f"x{m.change:.3f} ({m.low:.2f}-{m.high:.2f})"
    else:
        text = f"x{m.change:.3f} (±{m.allowed * 100:.0f}%)"
    return text if m.gated else f"{text} ng"


def table_rows(comparison: Comparison) -> list[list[str]]:
    """One row per cell: id, verdict, tier, accuracy deltas, throughput ratios, reason."""
    return [
        [
            c.cell_id,
            c.verdict,
            c.tier,
            _fmt_points(c.metric("best val accuracy")),
            _fmt_points(c.metric("test accuracy")),
            _fmt_ratio(c.metric("train throughput")),
            _fmt_ratio(c.metric("inference throughput")),
            c.reason,
        ]
        for c in comparison.cells
    ]


TABLE_HEADERS = (
    "cell",
    "verdict",
    "tier",
    "best val acc Δ pts (allowed)",
    "test acc Δ pts (allowed)",
    "train img/s ratio (allowed)",
    "inference img/s ratio (allowed)",
    "notes",
)


def legend_lines(comparison: Comparison) -> list[str]:
    """What the table's numbers mean and what calibrated them (terminal and report)."""
    lines = [comparison.tier_line()]
    if comparison.selection:
        lines.append(f"baseline: {comparison.selection}")
    lines.append(comparison.environment_line())
    lines += [f"noise: {line}" for line in comparison.noise_models]
    lines += [f"matrix-wide: {m.describe()}" for m in comparison.matrix_checks]
    lines.append(
        "'=' bit-identical; accuracy Δ in points against the baseline (statistical tier: "
        "against the mean of its seeds); throughput ratio run/baseline with its allowed "
        "range; 'ng' = not gated"
    )
    gate = comparison.gate_line()
    if gate:
        lines.append(gate)
    return lines


def render_table(comparison: Comparison, tablefmt: str = "simple") -> str:
    """The verdict table (tabulate), then what calibrated it, then the summary line."""
    table = tabulate(table_rows(comparison), headers=TABLE_HEADERS, tablefmt=tablefmt)
    lines = [table, "", *legend_lines(comparison)]
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
