"""Trend charts for the dashboard: one SVG per cell, four panels, steps marked.

Panels: best validation accuracy, train images/s, inference images/s, peak memory. The x
axis is the profile's runs in time order (shared by every series, so two machines line up
by night); each series (hardware identity + lock digest) has its own colour, and each
detected step is a dashed vertical line in that colour at the first run of the new level,
labelled with its size. The SVG is returned as text, ready to inline: its XML prologue is
dropped and its element ids are prefixed so that many charts can share one page.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import matplotlib
from matplotlib.figure import Figure

from harness.history import METRICS, Series

PANELS: tuple[str, ...] = (
    "best_val_accuracy",
    "train_images_per_s",
    "inference_images_per_s",
    "peak_memory_mib",
)
COLOURS = (
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


def colour(index: int) -> str:
    return COLOURS[index % len(COLOURS)]


def _scale(metric: str) -> float:
    return 100.0 if METRICS[metric].unit == "%" else 1.0


def _ylabel(metric: str) -> str:
    spec = METRICS[metric]
    return f"{spec.label} ({spec.unit})"


def _step_label(metric: str, relative: float, absolute: float) -> str:
    if METRICS[metric].unit == "%":
        return f"{100 * absolute:+.1f} pts"
    return f"{100 * relative:+.0f}%"


def trend_svg(
    series: Sequence[Series],
    run_order: Sequence[str],
    run_labels: Sequence[str],
    machine_index: dict[str, int],
    *,
    prefix: str,
) -> str:
    """The four-panel trend chart of one cell's ``series`` as inline SVG text.

    ``run_order`` are the run folders in x order, ``run_labels`` their tick labels;
    ``machine_index`` maps a series' machine to its colour index.
    """
    x_of = {folder: i for i, folder in enumerate(run_order)}
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True).ravel()
    step = max(1, len(run_order) // 8)
    for ax, metric in zip(axes, PANELS, strict=True):
        scale = _scale(metric)
        ax.set_title(_ylabel(metric), fontsize=9, loc="left")
        ax.grid(True, alpha=0.3)
        drawn = False
        for s in (s for s in series if s.metric == metric):
            c = colour(machine_index[s.machine])
            xs = [x_of[p.folder] for p in s.points]
            ys = [p.value * scale for p in s.points]
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, color=c)
            for st in s.steps:
                x = x_of[st.folder] - 0.5
                ax.axvline(x, color=c, linestyle="--", linewidth=1)
                ax.annotate(
                    _step_label(metric, st.relative, st.absolute),
                    xy=(x, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -10), textcoords="offset points", fontsize=8, color=c,
                )  # fmt: skip
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        elif METRICS[metric].unit == "%":  # at least 2 points tall: noise is not a cliff
            low, high = ax.get_ylim()
            mid, half = (low + high) / 2, max((high - low) / 2, 1.0)
            ax.set_ylim(mid - half, mid + half)
        else:  # rates and memory from zero: a step's height is its size
            ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.08)
        ax.tick_params(labelsize=7)
    for ax in axes[2:]:
        ticks = list(range(0, len(run_order), step))
        ax.set_xticks(ticks, [run_labels[i] for i in ticks], rotation=30, ha="right")
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix}):
        fig.savefig(buf, format="svg")
    return inline_svg(buf.getvalue(), prefix)


_ID = re.compile(r'id="([^"]+)"')


def inline_svg(svg: str, prefix: str) -> str:
    """Drop the XML prologue and prefix every id (and its references) with ``prefix``."""
    start = svg.find("<svg")
    svg = svg[start:] if start >= 0 else svg
    ids = set(_ID.findall(svg))
    for old in sorted(ids, key=len, reverse=True):
        new = f"{prefix}-{old}"
        svg = svg.replace(f'id="{old}"', f'id="{new}"')
        svg = svg.replace(f"url(#{old})", f"url(#{new})")
        svg = svg.replace(f'href="#{old}"', f'href="#{new}"')
    return svg
