"""The statistical tier: allowances calibrated by measured noise, and their false-alarm rates.

Where a run cannot be held to bit-identity with its baseline (another machine type, lock,
backend or thread setting: :mod:`harness.analysis.reprokey`), a change is flagged only when it is
larger than noise could make it at a stated false-alarm rate. Pure functions over plain
numbers: no files, no Keras.

**Accuracy** (best validation, test), per cell. A training run on another key behaves
like a run with another seed: its accuracy is one draw from the cell's seed-to-seed
distribution. The model is *quasi-binomial*: the variance of a cell's accuracy across
seeds is ``phi * p (1 - p) / n``, where ``n`` is the size of the evaluated split and ``p``
the accuracy; ``phi`` (>= 1: never less than the binomial noise of ``n`` examples) is
estimated from the baseline's noise seeds, pooled over all cells (:func:`accuracy_model`,
with ``sum(k_i - 1)`` degrees of freedom). A new run is compared with the mean ``m`` of
the baseline's ``K`` seeds by a prediction interval: ``|run - m| <= t(1 - a/2, df) * s *
sqrt(1 + 1/K)``. Without noise seeds ``phi = 1`` (binomial only; said so, since training
noise is then not measured).

**Accuracy across the matrix** (:func:`combined`): a drop too small to see in one cell
but present in all (a preprocessing bug worth 3 points) is tested with Stouffer's sum of
the cells' standardised changes, ``Z = sum(z_i) / sqrt(m)``.

**Throughput** (train, inference images/s), per cell, on a log scale, with two sources of
noise (:func:`throughput_model`). *Within a session*, processes of the same cell differ: the
baseline's repeats (each a fresh process, one recording) measure that spread, ``s_w``.
*Between sessions* (another night, another host behind the same CPU model) a cell's level
moves as a whole: on the 2-core Xeon, identical code ran the smoke scratch cells 13-17 %
slower than the recording of their baseline, three times the spread of its repeats. The
cell's recent history on the same key (conbench's "last N runs of this hardware", one
session each) measures the total ``s_h^2 = s_w^2 + s_b^2``; the between-session part is
``s_b^2 = max(0, s_h^2 - s_w^2)``. A run's change against the baseline then has variance
``s_w^2 (1/n_run + 1/n_base) + 2 s_b^2`` (the run's session and the baseline's each drew
a level). Both scales are pooled over cells as one relative scale, estimated robustly
(median absolute deviation) so one bad night does not widen them. With fewer than two
history runs ``s_b`` is not measured, and the profile's minimum effect has to cover it.

**Rates.** ``a`` per test is the run's false-alarm rate divided between the families of
tests and then between the tests of each (Bonferroni, :func:`split`), so the stated rate
holds for the whole run. Every limit is also at least the
profile's minimum effect (``accuracy_points``, ``throughput_relative``): a change smaller
than that is not worth a red build even when it is real; where that floor decides the
limit, the implied false-alarm rate is lower still, and said. The limits are symmetric
(on a log scale for throughput): an improvement is exactly as hard to earn as a
regression.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DEFAULT_FALSE_ALARM = 0.01  # per run: the chance that identical code is flagged at all
MAD_TO_SD = 1.4826  # a normal sample's standard deviation per median absolute deviation


def quantile(alpha: float, df: float) -> float:
    """The two-sided critical value for a per-test rate ``alpha``: Student's t with ``df``
    degrees of freedom (normal when ``df`` is infinite)."""
    from scipy.stats import norm, t

    q = 1.0 - alpha / 2.0
    return float(norm.ppf(q)) if math.isinf(df) else float(t.ppf(q, df))


def tail(limit_in_se: float, df: float) -> float:
    """The two-sided probability of exceeding ``limit_in_se`` standard errors under noise."""
    from scipy.stats import norm, t

    if math.isinf(df):
        return float(2.0 * norm.sf(limit_in_se))
    return float(2.0 * t.sf(limit_in_se, df))


def per_test(run_rate: float, tests: int) -> float:
    """Bonferroni: the per-test rate that keeps the run's rate at ``run_rate``."""
    return run_rate / max(1, tests)


def split(run_rate: float, counts: dict[str, int], shares: dict[str, float]) -> dict[str, float]:
    """The per-test rate of each family: ``run_rate`` divided between the families that
    make tests in proportion to ``shares``, then evenly within each (Bonferroni), so the
    chance of any false alarm in the run is at most ``run_rate``."""
    present = {f: shares[f] for f, n in counts.items() if n > 0}
    total = sum(present.values())
    return {
        f: (run_rate * present[f] / total / counts[f]) if f in present else run_rate for f in counts
    }


@dataclass(frozen=True)
class Allowance:
    """One gated comparison in the statistical tier.

    ``limit`` is the allowed ``|run - center|`` (accuracy: points; throughput: natural log
    of the ratio), ``se`` the standard error of that difference under noise, ``alpha`` the
    two-sided false-alarm rate the limit implies for this one test.
    """

    center: float
    se: float
    limit: float
    alpha: float
    df: float
    floor_binding: bool

    @property
    def z_limit(self) -> float:
        return self.limit / self.se if self.se > 0 else math.inf


def _allowance(center: float, se: float, alpha: float, df: float, floor: float) -> Allowance:
    q = quantile(alpha, df)
    if floor >= q * se:
        implied = tail(floor / se, df) if se > 0 else 0.0
        return Allowance(center, se, floor, implied, df, True)
    return Allowance(center, se, q * se, alpha, df, False)


@dataclass(frozen=True)
class AccuracyModel:
    """Quasi-binomial seed noise of one accuracy metric (``phi`` times binomial)."""

    metric: str
    phi: float  # measured over-dispersion (not floored); 1.0 when not measured
    df: int  # degrees of freedom behind phi: 0 = not measured
    cells: int  # cells with seed samples
    samples_per_cell: int  # the most samples a cell has (its seed 0 and noise seeds)

    @property
    def phi_used(self) -> float:
        return max(1.0, self.phi)

    def describe(self) -> str:
        if not self.df:
            return (
                f"{self.metric}: binomial noise of the evaluated split only (the baseline "
                "has no noise seeds: training noise not measured, `bench baseline record`)"
            )
        return (
            f"{self.metric}: quasi-binomial, phi {self.phi:.2f} (used {self.phi_used:.2f}) "
            f"from {self.cells} cells x up to {self.samples_per_cell} seeds, {self.df} df"
        )


def clamp_p(p: float, n: int) -> float:
    """An accuracy kept off 0 and 1 by half an example, so its binomial variance is > 0."""
    half = 0.5 / max(1, n)
    return min(max(p, half), 1.0 - half)


def binomial_var(p: float, n: int) -> float:
    """Variance of an accuracy measured on ``n`` examples (as a fraction)."""
    q = clamp_p(p, n)
    return q * (1.0 - q) / max(1, n)


def accuracy_model(metric: str, samples: Iterable[tuple[Sequence[float], int]]) -> AccuracyModel:
    """Pool ``phi`` over cells: ``samples`` gives each cell's seed values and split size."""
    num = 0.0
    df = 0
    cells = 0
    most = 0
    for values, n in samples:
        vals = [float(v) for v in values]
        most = max(most, len(vals))
        if len(vals) < 2 or n < 1:
            continue
        var = statistics.variance(vals)
        num += (len(vals) - 1) * var / binomial_var(statistics.fmean(vals), n)
        df += len(vals) - 1
        cells += 1
    phi = num / df if df else 1.0
    return AccuracyModel(metric, phi, df, cells, most)


def accuracy_allowance(
    model: AccuracyModel, base_values: Sequence[float], n: int, alpha: float, floor_points: float
) -> Allowance:
    """Allowed change in points of one cell's accuracy (``base_values``: its seed 0 and
    noise seeds in the baseline; ``n``: the evaluated split's size)."""
    k = len(base_values)
    center = statistics.fmean(base_values)
    sigma = 100.0 * math.sqrt(model.phi_used * binomial_var(center, n))
    se = sigma * math.sqrt(1.0 + 1.0 / k)
    df = float(model.df) if model.df else math.inf
    return _allowance(100.0 * center, se, alpha, df, floor_points)


@dataclass(frozen=True)
class Combined:
    """Stouffer's combination of standardised changes across cells (one metric)."""

    metric: str
    cells: int
    z: float
    limit: float
    mean_change: float  # mean change in the metric's unit, for reading
    alpha: float

    @property
    def verdict(self) -> str:
        if self.z < -self.limit:
            return "regression"
        if self.z > self.limit:
            return "improvement"
        return "within noise"

    def describe(self, unit: str = "pts") -> str:
        return (
            f"{self.metric} across {self.cells} cells: mean {self.mean_change:+.2f} {unit}, "
            f"z = {self.z:+.2f} (allowed |z| <= {self.limit:.2f}, false alarms "
            f"{self.alpha * 100:.2g} %): {self.verdict}"
        )


def combined(
    metric: str, changes: Sequence[tuple[float, float]], alpha: float, df: float = math.inf
) -> Combined | None:
    """From ``(change, se)`` per cell; None with fewer than two cells (nothing to combine).
    ``df``: the degrees of freedom behind the standard errors (Student's t, not normal,
    when the noise was estimated from few samples)."""
    usable = [(c, s) for c, s in changes if s > 0]
    if len(usable) < 2:
        return None
    z = sum(c / s for c, s in usable) / math.sqrt(len(usable))
    mean = statistics.fmean(c for c, _ in usable)
    return Combined(metric, len(usable), z, quantile(alpha, df), mean, alpha)


@dataclass(frozen=True)
class ThroughputModel:
    """Noise of log images/s, pooled over cells (one relative scale): ``sd`` between
    processes of one session (the baseline's repeats), ``between`` between sessions (from
    the history of this key; 0 when not measured)."""

    sd: float  # of log images/s between processes of one cell in one session
    df: int
    repeats: int  # baseline repeat samples used
    history: int  # history samples used
    groups: int
    phase: str = "train"
    between: float = 0.0  # of a session's log level around the cell's (history)
    between_df: int = 0  # degrees of freedom behind the history's total spread

    @property
    def measured(self) -> bool:
        return self.df >= 2

    @property
    def df_used(self) -> float:
        """Degrees of freedom of the change's standard error: the scarcer source decides."""
        return float(min(self.df, self.between_df) if self.between_df else self.df)

    def variance(self, n_run: int, n_base: int) -> float:
        """Variance of ``log(run / baseline)`` for geometric means of ``n_run`` and
        ``n_base`` processes, each side from its own session."""
        within = self.sd**2 * (1.0 / max(1, n_run) + 1.0 / max(1, n_base))
        return within + 2.0 * self.between**2

    def describe(self) -> str:
        if not self.measured:
            return (
                f"{self.phase} throughput: noise not measured (the baseline has no repeats and "
                "this key no history): the profile's fixed band, false-alarm rate unknown"
            )
        within = (
            f"{self.phase} throughput: {self.sd * 100:.1f} % between processes (robust SD of "
            f"log images/s from {self.repeats} baseline repeats, {self.df} df)"
        )
        if not self.between_df:
            return (
                f"{within}; between sessions not measured (fewer than 2 runs of history on "
                "this key): the minimum effect covers it"
            )
        return (
            f"{within}; {self.between * 100:.1f} % between sessions (from {self.history} "
            f"cell results in this key's history, {self.between_df} df)"
        )


def _pooled_sd(groups: Iterable[Sequence[float]]) -> tuple[float, int, int, int]:
    """Robust SD of log values around each group's median, pooled over groups (MAD, with
    the n/(n-1) correction for small groups); with its df, samples and groups."""
    deviations: list[float] = []
    df = samples = used = 0
    for values in groups:
        logs = [math.log(v) for v in values if v > 0]
        if len(logs) < 2:
            continue
        mid = statistics.median(logs)
        deviations += [x - mid for x in logs]
        df += len(logs) - 1
        samples += len(logs)
        used += 1
    if df < 2:
        return 0.0, df, samples, used
    mad = statistics.median(abs(d) for d in deviations)
    return MAD_TO_SD * mad * math.sqrt(len(deviations) / df), df, samples, used


def throughput_model(
    repeat_groups: Iterable[Sequence[float]],
    history_groups: Iterable[Sequence[float]] = (),
    phase: str = "train",
) -> ThroughputModel:
    """The within-session scale from ``repeat_groups`` (one cell's baseline repeats each)
    and the between-session scale from ``history_groups`` (one cell's history runs each,
    one session per value). Without repeats the history's spread is all the model has,
    and it is used as the within-session scale (conservative: it holds both)."""
    sd_w, df_w, n_w, g_w = _pooled_sd(repeat_groups)
    sd_h, df_h, n_h, g_h = _pooled_sd(history_groups)
    if df_w < 2:  # no repeats: the history's total spread stands for the process noise
        return ThroughputModel(sd_h, df_h, 0, n_h, g_h, phase)
    between = math.sqrt(max(0.0, sd_h**2 - sd_w**2)) if df_h >= 2 else 0.0
    return ThroughputModel(
        sd_w, df_w, n_w, n_h, g_w + g_h, phase, between, df_h if df_h >= 2 else 0
    )


def throughput_allowance(
    model: ThroughputModel,
    base_rates: Sequence[float],
    run_rates: Sequence[float],
    alpha: float,
    floor_relative: float,
) -> Allowance:
    """Allowed ``|log(run / baseline)|`` of one cell (geometric means of each side's
    process medians); the floor is the profile's minimum effect, symmetric on a log scale."""
    center = statistics.fmean(math.log(r) for r in base_rates)
    se = math.sqrt(model.variance(len(run_rates), len(base_rates)))
    floor = -math.log(1.0 - floor_relative) if floor_relative < 1 else math.inf
    return _allowance(center, se, alpha, model.df_used, floor)
