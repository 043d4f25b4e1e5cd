"""The report's figures as PNG files (matplotlib, Agg, no pyplot global state).

* learning curves per dataset, strategies overlaid: loss and accuracy, train (solid)
  and validation (dashed), like the experiment's figures;
* accuracy against training throughput, one point per cell (log x when the range is wide);
* baseline deltas: accuracy change in points and train throughput change in percent per
  cell, coloured by verdict, with the allowed band marked.

Each function writes its PNG atomically and returns the path.
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; Figure() below never touches pyplot's global state

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness.compare import IMPROVEMENT, REGRESSION, Comparison
from harness.jsonio import atomic_write_bytes
from harness.results import CellResult

DPI = 110
STRATEGY_ORDER = (
    "scratch",
    "feature-extract",
    "linear-probe",
    "fine-tune",
    "two-stage",
    "full-fine-tune",
)
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
VERDICT_COLOURS = {REGRESSION: "#d62728", IMPROVEMENT: "#2ca02c"}
NEUTRAL = "#7f7f7f"


def strategy_colour(strategy: str) -> str:
    """A fixed colour per strategy, the same in every figure."""
    idx = STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else None
    if idx is None:
        idx = len(STRATEGY_ORDER) + sum(map(ord, strategy)) % (len(_PALETTE) - len(STRATEGY_ORDER))
    return _PALETTE[idx % len(_PALETTE)]


def strategy_key(s: str) -> tuple[int, str]:
    return (STRATEGY_ORDER.index(s) if s in STRATEGY_ORDER else 99, s)


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def learning_curves(dataset: str, cells: list[CellResult], path: Path) -> Path:
    """Loss and accuracy per epoch, train solid and val dashed, one colour per strategy.

    Repeats of a strategy (seeds) share its colour; precisions differ by marker.
    """
    ok = sorted(
        (c for c in cells if c.ok and c.history),
        key=lambda c: (strategy_key(c.strategy), c.cell_id),
    )
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    per_strategy: dict[str, list[CellResult]] = defaultdict(list)
    for c in ok:
        per_strategy[c.strategy].append(c)
    precisions = sorted({c.precision for c in ok})
    marker = {p: _MARKERS[i % len(_MARKERS)] for i, p in enumerate(precisions)}
    for c in ok:
        epochs = [e.epoch + 1 for e in c.history]  # Keras epochs are 0-based; plot from 1
        style = {
            "color": strategy_colour(c.strategy),
            "marker": marker[c.precision],
            "markersize": 3.5,
            "linewidth": 1.6,
        }
        ax_loss.plot(epochs, [e.loss for e in c.history], linestyle="-", **style)
        ax_acc.plot(epochs, [100 * e.accuracy for e in c.history], linestyle="-", **style)
        val = [(x, e) for x, e in zip(epochs, c.history, strict=True) if e.val_loss is not None]
        if val:
            xs = [x for x, _ in val]
            ax_loss.plot(xs, [e.val_loss for _, e in val], linestyle="--", **style)
            accs = [(x, e.val_accuracy) for x, e in val if e.val_accuracy is not None]
            ax_acc.plot([x for x, _ in accs], [100 * a for _, a in accs], linestyle="--", **style)
    handles = []
    for strategy, group in per_strategy.items():
        seeds = sorted({c.seed for c in group})
        label = strategy if len(seeds) == 1 else f"{strategy} ({len(seeds)} seeds)"
        handles.append(Line2D([], [], color=strategy_colour(strategy), linewidth=2.5, label=label))
    handles += [
        Line2D([], [], color="black", linestyle="-", label="train"),
        Line2D([], [], color="black", linestyle="--", label="validation"),
    ]
    if len(precisions) > 1:
        handles += [
            Line2D([], [], color="black", marker=marker[p], linestyle="", label=p)
            for p in precisions
        ]
    ax_loss.set(title="loss", xlabel="epoch", ylabel="cross-entropy loss")
    ax_acc.set(title="accuracy", xlabel="epoch", ylabel="accuracy (%)")
    ax_acc.set_ylim(-2, 102)
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if not ok:
        ax_acc.text(0.5, 0.5, "no successful cell", ha="center", transform=ax_acc.transAxes)
    fig.legend(handles=handles, loc="outside right center", frameon=False)
    fig.suptitle(f"{dataset}: learning curves per strategy (train solid, validation dashed)")
    return _save(fig, path)


def accuracy_vs_throughput(cells: list[CellResult], path: Path) -> Path:
    """One point per ok cell: accuracy (%) against median train images/s (IQR as error bar)."""
    ok = [c for c in cells if c.ok and c.train_throughput is not None]
    use_test = bool(ok) and all(c.test_accuracy is not None for c in ok)
    metric = "test accuracy" if use_test else "best validation accuracy"
    datasets = sorted({c.dataset for c in ok})
    marker = {d: _MARKERS[i % len(_MARKERS)] for i, d in enumerate(datasets)}
    fig = Figure(figsize=(9, 5.6), layout="constrained")
    ax = fig.subplots()
    rates = []
    for c in sorted(ok, key=lambda c: (c.dataset, strategy_key(c.strategy))):
        t = c.train_throughput
        acc = c.test_accuracy if use_test else c.best_val_accuracy
        if t is None or acc is None:
            continue
        rates.append(t.images_per_s)
        ax.errorbar(
            t.images_per_s,
            100 * acc,
            xerr=[
                [max(t.images_per_s - t.images_per_s_p25, 0)],
                [max(t.images_per_s_p75 - t.images_per_s, 0)],
            ],
            fmt=marker[c.dataset],
            color=strategy_colour(c.strategy),
            markersize=9,
            markeredgecolor="black",
            capsize=3,
        )
    if rates and max(rates) / max(min(rates), 1e-9) > 20:
        ax.set_xscale("log")
    batch_prec = sorted(
        {
            (c.train_throughput.batch_size, c.train_throughput.precision)
            for c in ok
            if c.train_throughput
        }
    )
    stated = ", ".join(f"batch {b}, {p}" for b, p in batch_prec) or "no data"
    ax.set(
        xlabel=f"train throughput (images/s, median; bars = IQR; {stated})",
        ylabel=f"{metric} (%)",
        title="accuracy vs training throughput, one point per cell",
    )
    ax.grid(True, which="both", alpha=0.3)
    strategies = sorted({c.strategy for c in ok}, key=strategy_key)
    handles = [
        Line2D([], [], color=strategy_colour(s), marker="o", linestyle="", markersize=9, label=s)
        for s in strategies
    ] + [
        Line2D(
            [],
            [],
            color="white",
            marker=marker[d],
            markeredgecolor="black",
            linestyle="",
            markersize=9,
            label=d,
        )
        for d in datasets
    ]
    if handles:
        ax.legend(
            handles=handles,
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            frameon=False,
            title="strategy (colour) / dataset (marker)",
        )
    else:
        ax.text(0.5, 0.5, "no successful cell with throughput", ha="center", transform=ax.transAxes)
    return _save(fig, path)


def baseline_deltas(comparison: Comparison, path: Path) -> Path:
    """Per cell: best-val-accuracy change (points) and train throughput change (%), vs baseline."""
    rows = [
        (c.cell_id, c.metric("best val accuracy"), c.metric("train throughput"))
        for c in comparison.cells
        if c.metric("best val accuracy") or c.metric("train throughput")
    ]
    n = max(len(rows), 1)
    fig = Figure(figsize=(12, max(3.4, 0.42 * n + 2.0)), layout="constrained")
    ax_acc, ax_thr = fig.subplots(1, 2, sharey=True)
    labels = [r[0] for r in rows]
    ys = list(range(len(rows)))
    for ax, idx, unit in ((ax_acc, 1, "points"), (ax_thr, 2, "percent")):
        for y, row in zip(ys, rows, strict=True):
            m = row[idx]
            if m is None:
                ax.text(0, y, " n/a", va="center", fontsize=8, color=NEUTRAL)
                continue
            value = m.change if unit == "points" else (m.change - 1) * 100
            allowed = m.allowed if unit == "points" else m.allowed * 100
            colour = VERDICT_COLOURS.get(m.verdict, NEUTRAL)
            ax.barh(
                y,
                value,
                color=colour,
                hatch=None if m.gated else "//",
                edgecolor="black",
                linewidth=0.5,
                height=0.6,
            )
            ax.annotate(
                f"{value:+.1f}",
                (value, y),
                xytext=(4 if value >= 0 else -4, 0),
                textcoords="offset points",
                ha="left" if value >= 0 else "right",
                va="center",
                fontsize=8,
            )
            ax.plot(
                [-allowed, allowed], [y, y], linestyle="", marker="|", markersize=14, color="black"
            )
        ax.axvline(0, color="black", linewidth=0.8)
        ax.margins(x=0.15)  # room for the value labels
        ax.grid(True, axis="x", alpha=0.3)
    ax_acc.set_yticks(ys, labels, fontsize=8)
    ax_acc.invert_yaxis()
    ax_acc.set(
        xlabel="best validation accuracy change (percentage points)", title="accuracy vs baseline"
    )
    ax_thr.set(
        xlabel="train throughput change (%, run vs baseline median images/s)",
        title="train throughput vs baseline"
        + ("" if comparison.throughput_gated else " (not gated: hardware differs)"),
    )
    handles = [
        Line2D([], [], color=VERDICT_COLOURS[REGRESSION], linewidth=8, label="regression"),
        Line2D([], [], color=VERDICT_COLOURS[IMPROVEMENT], linewidth=8, label="improvement"),
        Line2D([], [], color=NEUTRAL, linewidth=8, label="within noise / not gated (hatched)"),
        Line2D(
            [],
            [],
            color="black",
            marker="|",
            linestyle="",
            markersize=14,
            label="allowed band (tolerance + noise)",
        ),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, frameon=False)
    fig.suptitle(f"run {comparison.run_id} vs baseline {comparison.baseline_run_id}")
    if not rows:
        ax_acc.text(0.5, 0.5, "no cell comparable", ha="center", transform=ax_acc.transAxes)
    return _save(fig, path)
