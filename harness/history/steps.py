"""Step detection over a series of nightly results: where did a metric move, and by how much.

Method: **PELT** (Killick, Fearnhead & Eckley, 2012, "Optimal detection of changepoints with a
linear computational cost"), as implemented by ``ruptures.Pelt``, fitting a piecewise-constant
level with the **L1 cost** (sum of absolute deviations from each segment's median). Like asv's
step detection, the L1 fit is robust: one odd night moves no median, so it makes no step.

* Values are fitted on a log scale for rates, memory and times (a step is a ratio, so a 10 %
  drop weighs the same at 100 and at 10,000 images/s) and linearly for accuracies.
* **Penalty** per changepoint: ``beta * b * ln(n)`` with ``b = sigma / sqrt(2)``. With
  ``beta = 1`` that is the BIC of Laplace noise of scale ``b`` (the L1 cost is its
  log-likelihood in units of ``b``; each change adds two parameters, its location and a new
  level). We use ``beta = 2``: on simulated series of 30 runs with Gaussian noise of 2-10 %
  it gave at most 0.05 false steps per flat series (BIC alone: up to 0.9) and still found a
  25 % step in 92 % of series at 10 % noise. ``sigma``
  is the noise, estimated robustly from the series itself as
  ``1.4826 * MAD(first differences) / sqrt(2)`` (a step is one large difference among many
  small ones, so it barely moves the estimate), floored at ``sigma_floor`` so that a series
  of bit-identical values does not turn every last-bit change into a step.
* ``min_size = 2``: a level needs at least two runs, so one odd night is not a step, and a
  step at the newest run is named once a second run confirms it.
* Steps smaller than ``min_step`` (relative on the log scale, absolute otherwise) are merged
  away, smallest first, and the remaining segments re-measured.

Each :class:`Step` names the index of the first point after the change, the medians of the
segments before and after, and its size. Pure: no I/O.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BETA = 2.0  # penalty multiplier: twice the BIC of Laplace noise (see the module docstring)
MIN_SIZE = 2  # runs per level, at least
MAD_TO_SIGMA = 1.4826  # MAD of a normal sample times this estimates its standard deviation


@dataclass(frozen=True)
class StepModel:
    """How to look for steps in one kind of metric."""

    scale: str = "log"  # "log" (steps are ratios) or "linear" (steps are differences)
    min_step: float = 0.05  # smallest step kept: relative (log) or absolute (linear)
    sigma_floor: float = 0.005  # smallest noise assumed, in the fitted scale's units
    beta: float = BETA
    min_size: int = MIN_SIZE

    def __post_init__(self) -> None:
        if self.scale not in ("log", "linear"):
            raise ValueError(f"StepModel.scale must be 'log' or 'linear'. Received: {self.scale!r}")
        if self.min_size < 1:
            raise ValueError(f"StepModel.min_size must be >= 1. Received: {self.min_size!r}")


@dataclass(frozen=True)
class Step:
    """A change of level: ``index`` is the first point of the new level."""

    index: int
    before: float  # median of the segment before the step
    after: float  # median of the segment from ``index`` on

    @property
    def relative(self) -> float:
        """``after / before - 1`` (``nan`` when ``before`` is 0)."""
        return self.after / self.before - 1.0 if self.before else math.nan

    @property
    def absolute(self) -> float:
        return self.after - self.before


def noise_sigma(z: Sequence[float]) -> float:
    """Robust noise estimate: 1.4826 * median |first difference| / sqrt(2) (0 if < 2 points)."""
    if len(z) < 2:
        return 0.0
    diffs = np.abs(np.diff(np.asarray(z, dtype=float)))
    return MAD_TO_SIGMA * float(np.median(diffs)) / math.sqrt(2.0)


def penalty(z: Sequence[float], model: StepModel) -> float:
    """The PELT penalty per changepoint: ``beta * b * ln(n)``, ``b = sigma / sqrt(2)``."""
    sigma = max(noise_sigma(z), model.sigma_floor)
    return model.beta * sigma / math.sqrt(2.0) * math.log(max(len(z), 2))


def _size(before: float, after: float, model: StepModel) -> float:
    if model.scale == "log":
        return abs(after / before - 1.0) if before else math.inf
    return abs(after - before)


def detect_steps(values: Sequence[float], model: StepModel | None = None) -> list[Step]:
    """Steps in ``values`` (in order), by PELT on the L1 cost; see the module docstring."""
    import ruptures

    model = model or StepModel()
    vals = [float(v) for v in values]
    n = len(vals)
    if n < 2 * model.min_size:
        return []
    if model.scale == "log":
        if any(v <= 0 or not math.isfinite(v) for v in vals):
            raise ValueError(f"log-scale step detection needs positive values. Received: {vals}")
        z = [math.log(v) for v in vals]
    else:
        z = vals
    algo = ruptures.Pelt(model="l1", min_size=model.min_size, jump=1).fit(
        np.asarray(z, dtype=float).reshape(-1, 1)
    )
    cuts = [b for b in algo.predict(pen=penalty(z, model)) if b < n]
    # Merge away steps below min_step, smallest first, re-measuring the merged segments.
    while cuts:
        bounds = [0, *cuts, n]
        medians = [statistics.median(vals[a:b]) for a, b in itertools.pairwise(bounds)]
        sizes = [_size(medians[i], medians[i + 1], model) for i in range(len(cuts))]
        smallest = min(range(len(cuts)), key=sizes.__getitem__)
        if sizes[smallest] >= model.min_step:
            return [
                Step(index=c, before=medians[i], after=medians[i + 1]) for i, c in enumerate(cuts)
            ]
        del cuts[smallest]
    return []
