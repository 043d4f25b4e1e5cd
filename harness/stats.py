"""Statistics over repeated measurements: spread across repeats, and a two-sample test.

Two uses, both pure functions over plain numbers (no Keras, no files):

- :class:`RepeatStats`: a throughput cell repeated N times, each repeat in a fresh
  process, summarised as MLPerf and asv report it: the median of the per-repeat medians,
  their inter-quartile range and their coefficient of variation (stdev / mean).
- :func:`mann_whitney`: the two-sided Mann-Whitney U test (``scipy.stats.mannwhitneyu``)
  that ``bench ab`` uses to call two sets of step times different, and
  :func:`smallest_p`: the smallest p-value the test can reach with samples of these
  sizes. When that is not below the significance level, no outcome of the test could
  say "different": there is not enough data, whatever the numbers are.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from harness.results import Spread


@dataclass(frozen=True)
class RepeatStats(Spread):
    """Spread of one figure across repeats (e.g. the median step time of each repeat): the
    result records' :class:`~harness.results.Spread`, refusing non-finite values, with the
    coefficient of variation and the relative IQR.

    ``cv`` is the sample standard deviation over the mean (0 for a single repeat);
    ``relative_iqr`` the IQR over the median, the figure :mod:`harness.analysis.compare` allows
    for as noise.
    """

    @property
    def cv(self) -> float:
        return self.stdev / self.mean if self.mean else math.inf

    @property
    def relative_iqr(self) -> float:
        return self.iqr / self.median if self.median else math.inf

    @classmethod
    def of(cls, values: Sequence[float]) -> RepeatStats:
        """From per-repeat values (at least one, each finite)."""
        vals = [float(v) for v in values]
        if not vals:
            raise ValueError("RepeatStats.of needs at least one value, got none")
        bad = [v for v in vals if not math.isfinite(v)]
        if bad:
            raise ValueError(f"RepeatStats.of needs finite values, got {bad[0]!r}")
        spread = Spread.of(vals)
        return cls(**{f.name: getattr(spread, f.name) for f in fields(Spread)})

    def to_dict(self) -> dict[str, float | int]:
        """The summary as plain JSON, with the derived IQR and CV spelled out."""
        return {
            "n": self.n,
            "median": self.median,
            "p25": self.p25,
            "p75": self.p75,
            "iqr": self.iqr,
            "cv": self.cv,
            "mean": self.mean,
            "stdev": self.stdev,
            "min": self.min,
            "max": self.max,
        }


def smallest_p(n: int, m: int) -> float:
    """The smallest two-sided p-value the Mann-Whitney U test can give for sizes n and m.

    It is reached when every value of one sample lies beyond every value of the other:
    2 / C(n + m, n) (capped at 1; computed in logs, so large samples give 0.0, not an
    overflow). With 5 against 5 that is 0.0079, so a threshold of 0.002 can never be met;
    7 against 7 gives 0.00058.
    """
    if n < 1 or m < 1:
        return 1.0
    log_comb = math.lgamma(n + m + 1) - math.lgamma(n + 1) - math.lgamma(m + 1)
    return min(1.0, 2.0 * math.exp(-log_comb))


def samples_needed(p_threshold: float) -> int:
    """The fewest samples per side (equal sizes) with which the U test can reach it."""
    n = 1
    while smallest_p(n, n) >= p_threshold:
        n += 1
    return n


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value for ``a`` against ``b`` (scipy; exact for small
    samples without ties, the normal approximation with tie correction otherwise)."""
    if not a or not b:
        raise ValueError(f"mann_whitney needs two non-empty samples, got {len(a)} and {len(b)}")
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(a, b, alternative="two-sided", method="auto").pvalue)


def throughput_repeats(step_series: Sequence[Sequence[float]], batch_size: int) -> dict[str, Any]:
    """A throughput cell run N times (each repeat a fresh process): per-repeat medians and
    their spread, as the cell result keeps them and the report shows them.

    ``step_series``: each repeat's measured (post-warm-up) step seconds. Each repeat is
    reduced to its median step time and its images/s (``batch_size / median``); the
    summary is :class:`RepeatStats` over the per-repeat images/s (median, IQR, CV across
    repeats). A repeat without steps is refused (ValueError naming it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    medians = []
    for i, steps in enumerate(step_series):
        if not len(steps):
            raise ValueError(f"repeat {i} has no measured steps")
        medians.append(statistics.median(float(s) for s in steps))
    if not medians:
        raise ValueError("throughput_repeats needs at least one repeat, got none")
    rates = [batch_size / m for m in medians]
    return {
        "repeats": len(medians),
        "median_step_s": medians,
        "images_per_s": rates,
        "summary": RepeatStats.of(rates).to_dict(),
    }
