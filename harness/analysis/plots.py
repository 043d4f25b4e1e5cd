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
from matplotlib.patches import Patch

from harness.analysis.compare import CHANGED, IMPROVEMENT, REGRESSION, Comparison
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
VERDICT_COLOURS = {REGRESSION: "#d62728", IMPROVEMENT: "#2ca02c", CHANGED: "#ff7f0e"}
NEUTRAL = "#7f7f7f"
PRECISION_SHORT = {"float32": "fp32", "mixed_float16": "fp16", "mixed_bfloat16": "bf16"}
PRECISION_HATCH = {"float32": None, "mixed_float16": "//", "mixed_bfloat16": ".."}


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
    """One point per ok cell: accuracy (%) against median train images/s (IQR as error bar).

    Colour = strategy; marker = dataset (and precision, when the run has several).
    """
    ok = [c for c in cells if c.ok and c.train_throughput is not None]
    use_test = bool(ok) and all(c.test_accuracy is not None for c in ok)
    metric = "test accuracy" if use_test else "best validation accuracy"
    multi_precision = len({c.precision for c in ok}) > 1

    def group(c: CellResult) -> str:
        short = PRECISION_SHORT.get(c.precision, c.precision)
        return f"{c.dataset} · {short}" if multi_precision else c.dataset

    groups = sorted({group(c) for c in ok})
    marker = {g: _MARKERS[i % len(_MARKERS)] for i, g in enumerate(groups)}
    fig = Figure(figsize=(9, 5.6), layout="constrained")
    ax = fig.subplots()
    rates = []
    for c in sorted(ok, key=lambda c: (c.dataset, strategy_key(c.strategy), c.precision)):
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
            fmt=marker[group(c)],
            color=strategy_colour(c.strategy),
            markersize=9,
            markeredgecolor="black",
            capsize=3,
            alpha=0.9,
        )
    if rates and max(rates) / max(min(rates), 1e-9) > 20:
        ax.set_xscale("log")
    batches = sorted({c.train_throughput.batch_size for c in ok if c.train_throughput})
    stated = ", ".join(f"batch {b}" for b in batches) or "no data"
    if ok and not multi_precision:
        stated += f", {ok[0].precision}"
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
            marker=marker[g],
            markeredgecolor="black",
            linestyle="",
            markersize=9,
            label=g,
        )
        for g in groups
    ]
    if handles:
        what = "dataset · precision" if multi_precision else "dataset"
        ax.legend(
            handles=handles,
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            frameon=False,
            title=f"strategy (colour) / {what} (marker)",
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
        Line2D([], [], color=VERDICT_COLOURS[CHANGED], linewidth=8, label="changed (exact tier)"),
        Line2D([], [], color=NEUTRAL, linewidth=8, label="within noise / not gated (hatched)"),
        Line2D(
            [],
            [],
            color="black",
            marker="|",
            linestyle="",
            markersize=14,
            label="allowed band (calibrated noise, at least the minimum effect)",
        ),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, frameon=False)
    fig.suptitle(f"run {comparison.run_id} vs baseline {comparison.baseline_run_id}")
    if not rows:
        ax_acc.text(0.5, 0.5, "no cell comparable", ha="center", transform=ax_acc.transAxes)
    return _save(fig, path)


def throughput_bars(cells: list[CellResult], path: Path) -> Path:
    """Train and inference images/s per cell (median, IQR whiskers), coloured by strategy.

    Precisions are told apart by hatching; the batch size and input kind are in the labels.
    """
    ok = sorted(
        (c for c in cells if c.ok and (c.train_throughput or c.inference_throughput)),
        key=lambda c: (c.dataset, strategy_key(c.strategy), c.precision, c.seed),
    )
    n = max(len(ok), 1)
    fig = Figure(figsize=(12, max(3.4, 0.36 * n + 2.0)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    ys = list(range(len(ok)))
    for ax, attr, title in (
        (axes[0], "train_throughput", "training"),
        (axes[1], "inference_throughput", "inference"),
    ):
        rates = []
        for y, c in zip(ys, ok, strict=True):
            t = getattr(c, attr)
            if t is None:
                ax.text(0, y, " n/a", va="center", fontsize=8, color=NEUTRAL)
                continue
            rates.append(t.images_per_s)
            ax.barh(
                y,
                t.images_per_s,
                xerr=[
                    [max(t.images_per_s - t.images_per_s_p25, 0)],
                    [max(t.images_per_s_p75 - t.images_per_s, 0)],
                ],
                color=strategy_colour(c.strategy),
                hatch=PRECISION_HATCH.get(c.precision),
                edgecolor="black",
                linewidth=0.5,
                height=0.65,
                capsize=2,
            )
            ax.annotate(
                f"{t.images_per_s:,.0f}",
                (t.images_per_s_p75, y),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        if rates and max(rates) / max(min(rates), 1e-9) > 30:
            ax.set_xscale("log")
        batches = sorted(
            {(t.batch_size, t.input) for c in ok if (t := getattr(c, attr)) is not None}
        )
        stated = ", ".join(f"batch {b}, {inp} input" for b, inp in batches) or "no data"
        ax.set(
            xlabel=f"images/s (median; whiskers = IQR; {stated})",
            title=f"{title} throughput per cell",
        )
        ax.margins(x=0.18)
        ax.grid(True, axis="x", which="both", alpha=0.3)
    axes[0].set_yticks(ys, [c.cell_id for c in ok], fontsize=8)
    axes[0].invert_yaxis()
    precisions = sorted({c.precision for c in ok})
    handles = [
        Patch(facecolor=strategy_colour(s), edgecolor="black", label=s)
        for s in sorted({c.strategy for c in ok}, key=strategy_key)
    ] + [
        Patch(facecolor="white", edgecolor="black", hatch=PRECISION_HATCH.get(p), label=p)
        for p in precisions
    ]
    if handles:  # a run where nothing succeeded has no bars, so no legend (ncol would be 0)
        fig.legend(
            handles=handles, loc="outside lower center", ncol=min(len(handles), 6), frameon=False
        )
    if not ok:
        axes[0].text(0.5, 0.5, "no throughput measured", ha="center", transform=axes[0].transAxes)
    return _save(fig, path)
