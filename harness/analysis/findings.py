"""Findings computed from a run's numbers: who won where, and did the rules of thumb hold.

The transfer-learning notes (``seeds/004``) give three rules of thumb:

* small data, similar domain: retrain only the head (a frozen-backbone strategy is
  competitive with, or better than, fine-tuning);
* big data, similar domain: fine-tune everything (an all-layers strategy wins);
* big data, different domain: training from scratch can win (or is competitive).

Each is checked on every dataset of the matching regime and stated as ``held``,
``did not hold`` or ``not enough data`` — never asserted without the numbers.
"Competitive" means within the profile's accuracy tolerance (``accuracy_points``).

**Did not learn.** A cell whose best validation accuracy is within noise of chance is
flagged and never ranked: a strategy is ranked on a dataset only when every one of its ok
cells learned, so no winner is declared over cells that did not learn, and a rule of thumb
that needs such a strategy says "not enough data". The rule (:func:`chance_check`): with
``K`` classes and ``n`` validation images, a model that guesses gets ``Binomial(n, 1/K)``
right; the cell learned when its best count of correct images reaches ``k``, the smallest count
with ``P(Binomial(n, 1/K) >= k) <= alpha``, ``alpha = CHANCE_ALPHA / epochs`` (Bonferroni
over the epochs the best is taken from). On the smoke sets (3 epochs) that bar is 62.5 %
for 2 classes and 200 images (chance 50 %), 30.5 % for 5 classes and 200 images (20 %),
6.25 % for 48 classes and 240 images (2.1 %). Chance is ``1/K``: right for balanced
validation sets (every synthetic set); on an unbalanced one the majority class can score
more, so there the flag is a floor. A cell that does not record its class count and
validation size (``config.effective``) is not tested.

A dataset's regime is the manifest entry's validated ``regime``
(``{"data": "small"|"big", "domain": "similar"|"different"}``). Without one it is
derived: data size from the train split (``< SMALL_TRAIN_IMAGES`` images is small),
domain "different" when the dataset is single-channel (grayscale) while the
pretrained weights are not — a weak heuristic, stated as "derived" in the report.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from harness.results import CellResult

HELD = "held"
NOT_HELD = "did not hold"
NOT_ENOUGH = "not enough data"

# Fallback size threshold: the experiment's few-class set (birds-30, 3000 train images) is
# "small"; its chest X-ray (4708) and 400-class birds (58388) sets are the "big" regimes.
SMALL_TRAIN_IMAGES = 4000

# One-sided significance for "learned" (before the Bonferroni split over epochs).
CHANCE_ALPHA = 0.001

SCRATCH = "scratch"
HEAD_ONLY = ("feature-extract", "linear-probe")  # backbone frozen: only the head learns
ALL_LAYERS = ("full-fine-tune", "two-stage")  # pretrained init, every layer ends up training
PRETRAINED = ("feature-extract", "linear-probe", "fine-tune", "full-fine-tune", "two-stage")

# The experiment's own names for our strategies (design.md), for the report's tables.
EXPERIMENT_NAMES: dict[str, str] = {
    "scratch": "scratch",
    "feature-extract": "pretrain",
    "fine-tune": "fine tuning (140)",
    "full-fine-tune": "initialize pretrain",
    "two-stage": "two-stage (notes)",
    "linear-probe": "linear classifier (notes)",
}


@dataclass(frozen=True)
class Regime:
    """A dataset's regime and how it was determined."""

    data: str | None  # "small" | "big" | None (unknown)
    domain: str | None  # "similar" | "different" | None (unknown)
    source: str  # e.g. "config", "manifest", "derived: 600 train images < 4000; 3 channels"

    @property
    def label(self) -> str:
        return f"{self.data or '?'} data, {self.domain or '?'} domain"


@dataclass(frozen=True)
class ChanceCheck:
    """Whether one cell's best validation accuracy is clear of chance, and the bar it met."""

    cell_id: str
    accuracy: float  # best val accuracy, fraction
    chance: float  # 1 / classes
    needed: int  # correct validation images a cell needs to have learned
    classes: int
    val_examples: int
    epochs: int

    @property
    def threshold(self) -> float:
        """The accuracy a cell needs: ``needed / val_examples``."""
        return self.needed / self.val_examples

    @property
    def learned(self) -> bool:
        return round(self.accuracy * self.val_examples) >= self.needed


@dataclass(frozen=True)
class StrategyScore:
    """Mean accuracy (%) of one strategy on one dataset over its ok cells."""

    strategy: str
    accuracy: float  # percent
    n: int  # cells averaged (seeds × precisions)


@dataclass(frozen=True)
class DatasetFinding:
    """The ranking of strategies on one dataset."""

    dataset: str
    regime: Regime
    metric: str  # "test accuracy" or "best val accuracy"
    scores: tuple[StrategyScore, ...]  # best first; only strategies whose cells all learned
    failed: tuple[str, ...]  # cell ids that failed
    did_not_learn: tuple[ChanceCheck, ...] = ()  # ok cells within noise of chance (not ranked)

    @property
    def winner(self) -> StrategyScore | None:
        return self.scores[0] if self.scores else None

    @property
    def margin(self) -> float | None:
        """Points between the winner and the runner-up (None with fewer than two)."""
        return self.scores[0].accuracy - self.scores[1].accuracy if len(self.scores) > 1 else None

    def score(self, strategy: str) -> StrategyScore | None:
        return next((s for s in self.scores if s.strategy == strategy), None)


@dataclass(frozen=True)
class RuleCheck:
    """One rule of thumb on one dataset (or on none, when no dataset has the regime)."""

    rule: str
    regime: str  # "small similar", "big similar", "big different"
    dataset: str | None
    status: str  # HELD, NOT_HELD or NOT_ENOUGH
    evidence: str


@dataclass(frozen=True)
class Findings:
    datasets: tuple[DatasetFinding, ...]
    rules: tuple[RuleCheck, ...]
    tolerance_points: float


def regime_of(
    dataset: str,
    cells: list[CellResult],
    manifest_entry: Any | None = None,
) -> Regime:
    """The regime of ``dataset``: declared in the manifest, or derived (module doc)."""
    declared = getattr(manifest_entry, "regime", None)
    if declared:
        return Regime(declared["data"], declared["domain"], "manifest")
    train = _train_images(cells, manifest_entry)
    channels = getattr(manifest_entry, "channels", None)
    data = None if train is None else ("small" if train < SMALL_TRAIN_IMAGES else "big")
    domain = None
    if channels is not None:
        domain = "different" if channels == 1 else "similar"  # pretrained on colour images
    why = [
        f"{train} train images {'<' if data == 'small' else '>='} {SMALL_TRAIN_IMAGES}"
        if train is not None
        else "train size unknown",
        f"{channels} channel(s)" if channels is not None else "channels unknown",
    ]
    return Regime(data, domain, "derived: " + "; ".join(why))


def binomial_upper_quantile(n: int, p: float, alpha: float) -> int:
    """The smallest ``k`` with ``P(Binomial(n, p) >= k) <= alpha`` (exact, in log space)."""
    if not 0 < p < 1:
        raise ValueError(f"chance probability must be in (0, 1), got {p!r}")
    log_p, log_q = math.log(p), math.log1p(-p)
    tail = 0.0
    for k in range(n, -1, -1):  # accumulate the upper tail from the top
        log_pmf = (
            math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * log_p + (n - k) * log_q
        )  # fmt: skip
        if tail + math.exp(log_pmf) > alpha:
            return k + 1
        tail += math.exp(log_pmf)
    return 0


def chance_check(cell: CellResult, alpha: float = CHANCE_ALPHA) -> ChanceCheck | None:
    """The did-not-learn test of one ok cell (module doc); None when the cell does not say
    its class count and validation size (``config.effective``) or has no val accuracy."""
    effective = cell.config.get("effective") if isinstance(cell.config, dict) else None
    if not cell.ok or cell.best_val_accuracy is None or not isinstance(effective, dict):
        return None
    classes, n = effective.get("num_classes"), effective.get("val_examples")
    if not isinstance(classes, int) or not isinstance(n, int) or classes < 2 or n < 1:
        return None
    epochs = max(1, sum(1 for h in cell.history if h.val_accuracy is not None))
    k = binomial_upper_quantile(n, 1.0 / classes, alpha / epochs)
    return ChanceCheck(
        cell.cell_id,
        float(cell.best_val_accuracy),
        1.0 / classes,
        k,
        classes,
        n,
        epochs,
    )


def _train_images(cells: list[CellResult], entry: Any | None) -> int | None:
    """What the runner actually trained on, else the manifest's train split size."""
    for c in cells:
        effective = c.config.get("effective")
        if isinstance(effective, dict) and isinstance(effective.get("train_examples"), int):
            return effective["train_examples"]
    splits = getattr(entry, "splits", None)
    if isinstance(splits, dict) and isinstance(splits.get("train"), int):
        return splits["train"]
    return None


def _metric(cells: list[CellResult]) -> tuple[str, str]:
    ok = [c for c in cells if c.ok]
    if ok and all(c.test_accuracy is not None for c in ok):
        return "test_accuracy", "test accuracy"
    return "best_val_accuracy", "best val accuracy"


def rank(dataset: str, cells: list[CellResult], regime: Regime) -> DatasetFinding:
    """Mean accuracy per strategy on ``dataset`` (ok cells only), best first.

    A strategy with an ok cell that did not learn is not ranked (module doc).
    """
    attr, label = _metric(cells)
    checks = [chk for c in cells if (chk := chance_check(c)) is not None]
    not_learned = tuple(chk for chk in checks if not chk.learned)
    unranked = {c.strategy for c in cells if any(chk.cell_id == c.cell_id for chk in not_learned)}
    by_strategy: dict[str, list[float]] = defaultdict(list)
    for c in cells:
        value = getattr(c, attr)
        if c.ok and value is not None and c.strategy not in unranked:
            by_strategy[c.strategy].append(100.0 * float(value))
    scores = sorted(
        (StrategyScore(s, statistics.fmean(v), len(v)) for s, v in by_strategy.items()),
        key=lambda s: (-s.accuracy, s.strategy),
    )
    failed = tuple(c.cell_id for c in cells if not c.ok)
    return DatasetFinding(dataset, regime, label, tuple(scores), failed, not_learned)


def _best(finding: DatasetFinding, strategies: tuple[str, ...]) -> StrategyScore | None:
    group = [s for s in finding.scores if s.strategy in strategies]
    return max(group, key=lambda s: s.accuracy) if group else None


def _compare_groups(
    finding: DatasetFinding,
    ours: tuple[str, ...],
    theirs: tuple[str, ...],
    tol: float,
    ours_name: str,
    theirs_name: str,
) -> tuple[str, str]:
    a, b = _best(finding, ours), _best(finding, theirs)
    if a is None or b is None:
        lacking = ours_name if a is None else theirs_name
        group = ours if a is None else theirs
        idle = [c.cell_id for c in finding.did_not_learn if c.cell_id.split("/")[1] in group]
        if idle:
            return NOT_ENOUGH, (
                f"no {lacking} cell on {finding.dataset} that learned "
                f"(within noise of chance: {', '.join(idle)})"
            )
        return NOT_ENOUGH, f"no ok {lacking} cell on {finding.dataset}"
    gap = a.accuracy - b.accuracy
    status = HELD if gap >= -tol else NOT_HELD
    relation = (
        f"{gap:.1f} pts ahead" if gap > 0 else f"{-gap:.1f} pts behind" if gap < 0 else "level"
    )
    evidence = (
        f"{a.strategy} {a.accuracy:.1f}% vs {b.strategy} {b.accuracy:.1f}% "
        f"({finding.metric}): {relation} (competitive = within {tol:g} pts)"
    )
    return status, evidence


RULES: tuple[tuple[str, str, str], ...] = (
    (
        "small",
        "similar",
        "retrain only the head: a frozen-backbone strategy is competitive "
        "with or better than fine-tuning",
    ),
    ("big", "similar", "fine-tune everything: an all-layers strategy wins"),
    ("big", "different", "training from scratch can win or is competitive"),
)


def check_rules(findings: list[DatasetFinding], tol: float) -> list[RuleCheck]:
    """Every rule on every dataset of its regime; "not enough data" when none matches."""
    out: list[RuleCheck] = []
    for data, domain, text in RULES:
        regime = f"{data} data, {domain} domain"
        matching = [f for f in findings if f.regime.data == data and f.regime.domain == domain]
        if not matching:
            known = ", ".join(f"{f.dataset} ({f.regime.label})" for f in findings) or "none"
            out.append(
                RuleCheck(
                    text, regime, None, NOT_ENOUGH, f"no dataset of this regime (run: {known})"
                )
            )
            continue
        for f in matching:
            if (data, domain) == ("small", "similar"):
                status, ev = _compare_groups(
                    f, HEAD_ONLY, ("fine-tune", *ALL_LAYERS), tol, "head-only", "fine-tuning"
                )
            elif (data, domain) == ("big", "similar"):
                others = tuple(s.strategy for s in f.scores if s.strategy not in ALL_LAYERS)
                status, ev = _compare_groups(f, ALL_LAYERS, others, tol, "all-layers", "other")
            else:
                status, ev = _compare_groups(
                    f, (SCRATCH,), PRETRAINED, tol, "scratch", "pretrained"
                )
            out.append(RuleCheck(text, regime, f.dataset, status, ev))
    return out


def compute(
    cells: list[CellResult],
    *,
    tolerance_points: float,
    manifest: Any | None = None,
) -> Findings:
    """Findings for a run's cells. ``manifest`` (a loaded Manifest) helps derive regimes."""
    by_dataset: dict[str, list[CellResult]] = defaultdict(list)
    for c in cells:
        by_dataset[c.dataset].append(c)
    ranked = []
    for name in sorted(by_dataset):
        entry = getattr(manifest, "datasets", {}).get(name) if manifest is not None else None
        regime = regime_of(name, by_dataset[name], entry)
        ranked.append(rank(name, by_dataset[name], regime))
    return Findings(tuple(ranked), tuple(check_rules(ranked, tolerance_points)), tolerance_points)


def did_not_learn_note(check: ChanceCheck) -> str:
    """``id (best val 20.5%, chance 20.0%, needs >= 30.5%)``."""
    return (
        f"{check.cell_id} (best val {100 * check.accuracy:.1f}%, chance "
        f"{100 * check.chance:.1f}%, needs >= {100 * check.threshold:.1f}%)"
    )


def winner_sentence(f: DatasetFinding, tol: float) -> str:
    """One line: who won on a dataset and by how much (or that it was a tie).

    Only strategies that learned are ranked; none is called a winner over one that did not.
    """
    if f.winner is None:
        if f.did_not_learn:
            return f"**{f.dataset}**: no strategy learned (every ok cell within noise of chance)."
        return f"**{f.dataset}**: no ok cell to rank."
    w = f.winner
    if f.margin is None:
        verb = "learned" if f.did_not_learn else "ran ok"
        return f"**{f.dataset}**: only {w.strategy} {verb} ({w.accuracy:.1f}% {f.metric})."
    second = f.scores[1]
    tie = f" — within the {tol:g}-pt tolerance, effectively a tie" if f.margin <= tol else ""
    verb = "led" if tie else "won"
    return (
        f"**{f.dataset}** ({f.regime.label}): {w.strategy} {verb} with {w.accuracy:.1f}% "
        f"{f.metric}, {f.margin:.1f} pts ahead of {second.strategy} "
        f"({second.accuracy:.1f}%){tie}."
    )
