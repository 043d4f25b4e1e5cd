"""Backends side by side: the same cell on two backends (or in two runs), per strategy.

A cell's *key* is its id without the backend: ``<dataset>/<strategy>/<precision>/s<seed>``.
Two results with the same key are a pair:

- within one run that has several backends (a ``backends`` axis), each backend's cell is
  paired with the reference backend's (TensorFlow when it is there, else the first by name);
- between two runs (``bench compare RUN --baseline OTHER_RUN``), each cell of RUN is paired
  with OTHER_RUN's cell of the same key and backend, else of its reference backend.

Per pair: the accuracy difference in points (best validation, test) against the profile's
``accuracy_points`` tolerance, and the throughput ratios ``other / reference`` of train and
inference images/s (medians); per strategy, the mean accuracy difference and the geometric
mean of the ratios over its datasets. Throughput ratios compare backends on the same
machine only when both sides ran on it: between runs, the two fingerprints say whether they
did (:mod:`harness.analysis.compare`). This module only reads results; it gates nothing.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

from harness.backends import DEFAULT as DEFAULT_BACKEND
from harness.results import CellResult


@dataclass(frozen=True)
class Pair:
    """One cell key on two sides: ``base`` (the reference) and ``other``."""

    key: str
    dataset: str
    strategy: str
    precision: str
    seed: int
    base_label: str  # e.g. "tensorflow" or "tensorflow (run 2026…-smoke)"
    other_label: str
    base_status: str
    other_status: str
    base_val: float | None = None  # best validation accuracy, 0..1
    other_val: float | None = None
    base_test: float | None = None
    other_test: float | None = None
    base_train: float | None = None  # train images/s (median)
    other_train: float | None = None
    base_inference: float | None = None
    other_inference: float | None = None
    base_compile_s: float | None = None  # first-epoch overhead (trace + compile)
    other_compile_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.base_status == "ok" and self.other_status == "ok"

    @property
    def val_delta(self) -> float | None:
        """Best validation accuracy, other - base, in points."""
        return _delta(self.base_val, self.other_val)

    @property
    def test_delta(self) -> float | None:
        return _delta(self.base_test, self.other_test)

    @property
    def train_ratio(self) -> float | None:
        return _ratio(self.base_train, self.other_train)

    @property
    def inference_ratio(self) -> float | None:
        return _ratio(self.base_inference, self.other_inference)

    def within(self, tolerance_points: float) -> bool | None:
        """Whether every accuracy difference is within ``tolerance_points`` (None: none known)."""
        deltas = [d for d in (self.val_delta, self.test_delta) if d is not None]
        return None if not deltas else all(abs(d) <= tolerance_points + 1e-9 for d in deltas)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            **asdict(self),
            "val_delta_points": self.val_delta,
            "test_delta_points": self.test_delta,
            "train_ratio": self.train_ratio,
            "inference_ratio": self.inference_ratio,
        }


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else 100.0 * (b - a)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or b is None or a <= 0 else b / a


def cell_key(cell: CellResult) -> str:
    """The cell id without its backend."""
    return f"{cell.dataset}/{cell.strategy}/{cell.precision}/s{cell.seed}"


def _compile_seconds(cell: CellResult) -> float | None:
    value = ((cell.extra or {}).get("compile") or {}).get("overhead_s")
    return float(value) if isinstance(value, (int, float)) else None


def _side(cell: CellResult, prefix: str) -> dict[str, Any]:
    t, i = cell.train_throughput, cell.inference_throughput
    return {
        f"{prefix}_status": cell.status,
        f"{prefix}_val": cell.best_val_accuracy,
        f"{prefix}_test": cell.test_accuracy,
        f"{prefix}_train": t.images_per_s if t else None,
        f"{prefix}_inference": i.images_per_s if i else None,
        f"{prefix}_compile_s": _compile_seconds(cell),
    }


def _pair(base: CellResult, other: CellResult, base_label: str, other_label: str) -> Pair:
    return Pair(
        key=cell_key(other),
        dataset=other.dataset,
        strategy=other.strategy,
        precision=other.precision,
        seed=other.seed,
        base_label=base_label,
        other_label=other_label,
        **_side(base, "base"),
        **_side(other, "other"),
    )


def _reference(backends: Iterable[str]) -> str:
    names = sorted(set(backends))
    return DEFAULT_BACKEND if DEFAULT_BACKEND in names else names[0]


def backends_of(cells: Iterable[CellResult]) -> list[str]:
    return sorted({c.backend for c in cells if c.backend and c.backend != "unknown"})


def within_run(cells: list[CellResult]) -> tuple[Pair, ...]:
    """Pairs of a run with several backends: every other backend against the reference."""
    if len(backends_of(cells)) < 2:
        return ()
    by_key: dict[str, dict[str, CellResult]] = defaultdict(dict)
    for c in cells:
        by_key[cell_key(c)][c.backend] = c
    ref = _reference(backends_of(cells))
    out = []
    for key in sorted(by_key):
        group = by_key[key]
        if ref not in group:
            continue
        for b in sorted(group):
            if b != ref:
                out.append(_pair(group[ref], group[b], ref, b))
    return tuple(out)


def between_runs(
    run_cells: list[CellResult], base_cells: list[CellResult], *, run_id: str, base_run_id: str
) -> tuple[Pair, ...]:
    """Pairs of two runs: each run cell against the other run's cell of the same key (the
    same backend when the other run has it, else its reference backend)."""
    by_key: dict[str, dict[str, CellResult]] = defaultdict(dict)
    for c in base_cells:
        by_key[cell_key(c)][c.backend] = c
    out = []
    for c in sorted(run_cells, key=lambda c: (cell_key(c), c.backend)):
        group = by_key.get(cell_key(c))
        if not group:
            continue
        base = group.get(c.backend) or group[_reference(group)]
        out.append(_pair(base, c, f"{base.backend} ({base_run_id})", f"{c.backend} ({run_id})"))
    return tuple(out)


def _gmean(values: list[float]) -> float | None:
    vals = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


@dataclass(frozen=True)
class StrategySummary:
    """One strategy and pair of sides, over its datasets (ok pairs only)."""

    strategy: str
    precision: str
    sides: str  # "tensorflow -> jax"
    pairs: int
    val_delta_mean: float | None
    val_delta_max_abs: float | None
    train_ratio_gmean: float | None
    inference_ratio_gmean: float | None
    base_compile_s_mean: float | None
    other_compile_s_mean: float | None


def per_strategy(pairs: Iterable[Pair]) -> list[StrategySummary]:
    groups: dict[tuple[str, str, str], list[Pair]] = defaultdict(list)
    for p in pairs:
        if p.ok:
            groups[(p.strategy, p.precision, f"{p.base_label} -> {p.other_label}")].append(p)
    out = []
    for (strategy, precision, sides), ps in sorted(groups.items()):
        deltas = [p.val_delta for p in ps if p.val_delta is not None]
        out.append(
            StrategySummary(
                strategy=strategy,
                precision=precision,
                sides=sides,
                pairs=len(ps),
                val_delta_mean=_mean(deltas),  # type: ignore[arg-type]
                val_delta_max_abs=max((abs(d) for d in deltas), default=None),
                train_ratio_gmean=_gmean([p.train_ratio for p in ps if p.train_ratio]),
                inference_ratio_gmean=_gmean([p.inference_ratio for p in ps if p.inference_ratio]),
                base_compile_s_mean=_mean([p.base_compile_s for p in ps]),
                other_compile_s_mean=_mean([p.other_compile_s for p in ps]),
            )
        )
    return out


def _f(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


STRATEGY_HEADERS = (
    "strategy",
    "precision",
    "reference -> other",
    "cells",
    "best val Δ pts (mean / largest)",
    "train img/s ratio (geo. mean)",
    "inference img/s ratio (geo. mean)",
    "first-epoch overhead s (ref / other)",
)
PAIR_HEADERS = (
    "cell",
    "reference -> other",
    "best val acc % (Δ pts)",
    "test acc % (Δ pts)",
    "train img/s (ratio)",
    "inference img/s (ratio)",
    "first-epoch overhead s",
    "status",
)


def strategy_rows(pairs: Iterable[Pair]) -> list[list[str]]:
    return [
        [
            s.strategy,
            s.precision,
            s.sides,
            str(s.pairs),
            f"{_f(s.val_delta_mean, '+.2f')} / {_f(s.val_delta_max_abs, '.2f')}",
            _f(s.train_ratio_gmean, ".3f"),
            _f(s.inference_ratio_gmean, ".3f"),
            f"{_f(s.base_compile_s_mean, '.1f')} / {_f(s.other_compile_s_mean, '.1f')}",
        ]
        for s in per_strategy(pairs)
    ]


def pair_rows(pairs: Iterable[Pair]) -> list[list[str]]:
    rows = []
    for p in pairs:
        status = "ok" if p.ok else f"{p.base_status} / {p.other_status}"
        rows.append(
            [
                p.key,
                f"{p.base_label} -> {p.other_label}",
                f"{_pct(p.base_val)} / {_pct(p.other_val)} ({_f(p.val_delta, '+.2f')})",
                f"{_pct(p.base_test)} / {_pct(p.other_test)} ({_f(p.test_delta, '+.2f')})",
                f"{_rate(p.base_train)} / {_rate(p.other_train)} (x{_f(p.train_ratio, '.3f')})",
                f"{_rate(p.base_inference)} / {_rate(p.other_inference)} "
                f"(x{_f(p.inference_ratio, '.3f')})",
                f"{_f(p.base_compile_s, '.1f')} / {_f(p.other_compile_s, '.1f')}",
                status,
            ]
        )
    return rows


def accuracy_line(pairs: Iterable[Pair], tolerance_points: float) -> str:
    """How far apart the two sides' accuracies are, against the profile's tolerance."""
    ok = [p for p in pairs if p.ok]
    deltas = [abs(d) for p in ok for d in (p.val_delta, p.test_delta) if d is not None]
    if not deltas:
        return "No accuracy known on both sides."
    inside = sum(1 for p in ok if p.within(tolerance_points))
    return (
        f"Accuracy: largest difference {max(deltas):.2f} points (best val and test, {len(ok)} "
        f"cell pairs); {inside} of {len(ok)} within the profile's ±{tolerance_points:g} points."
    )


def render(pairs: tuple[Pair, ...], tolerance_points: float, tablefmt: str = "simple") -> str:
    """Per-strategy summary, per-cell table and the accuracy line, as text."""
    return "\n".join(
        [
            tabulate(
                strategy_rows(pairs),
                headers=STRATEGY_HEADERS,
                tablefmt=tablefmt,
                disable_numparse=True,
            ),
            "",
            tabulate(
                pair_rows(pairs), headers=PAIR_HEADERS, tablefmt=tablefmt, disable_numparse=True
            ),
            "",
            accuracy_line(pairs, tolerance_points),
            "Ratios are other / reference images/s (medians, steady state, warm-up excluded); "
            "first-epoch overhead = first epoch minus the median later epoch (trace + compile).",
        ]
    )
