"""The exact tier: where a cell must reproduce its baseline bit for bit, where did it not?

Used by :mod:`harness.analysis.compare` when the run and the baseline share a reproducibility key
(:mod:`harness.analysis.reprokey`): then any difference in what a cell computed is a finding, not
noise, however small. :func:`first_divergence` walks the result in the order it was
computed — epoch by epoch (loss, accuracy, val loss, val accuracy, learning rate), then
the summary accuracies, then the digest of the trained weights — and names the first
value that differs. Times and throughput are not compared here: they are never
bit-identical and are judged statistically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.results import CellResult

EPOCH_FIELDS: tuple[str, ...] = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
SUMMARY_FIELDS: tuple[str, ...] = (
    "best_train_accuracy",
    "best_val_accuracy",
    "final_val_accuracy",
    "test_accuracy",
    "epochs_to_target",
)


@dataclass(frozen=True)
class Divergence:
    """The first computed value that differs from the baseline: where, and both values."""

    epoch: int | None  # 1-based epoch, None for a summary value or the weights
    metric: str
    baseline: Any
    run: Any

    def describe(self) -> str:
        where = f"epoch {self.epoch} {self.metric}" if self.epoch else self.metric
        return f"first divergence: {where} {_fmt(self.baseline)} -> {_fmt(self.run)}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.9g}"
    if isinstance(value, str) and len(value) > 12:
        return value[:12]
    return str(value)


def first_divergence(base: CellResult, run: CellResult) -> Divergence | None:
    """The first value ``run`` computed differently from ``base`` (None: bit-identical)."""
    if len(base.history) != len(run.history):
        return Divergence(None, "epochs run", len(base.history), len(run.history))
    for b, r in zip(base.history, run.history, strict=True):
        for name in EPOCH_FIELDS:
            vb, vr = getattr(b, name), getattr(r, name)
            if vb != vr:
                return Divergence(b.epoch + 1, name, vb, vr)
    for name in SUMMARY_FIELDS:
        vb, vr = getattr(base, name), getattr(run, name)
        if vb != vr:
            return Divergence(None, name.replace("_", " "), vb, vr)
    if base.weights_digest != run.weights_digest:
        return Divergence(None, "weights digest", base.weights_digest, run.weights_digest)
    return None
