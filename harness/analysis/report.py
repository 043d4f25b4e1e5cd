"""``report.md`` for a run: the results matrix, findings, baseline verdicts, environment, plots.

Tables are GitHub-flavoured markdown rendered with tabulate; figures are PNGs from
:mod:`harness.analysis.plots` in ``plots/`` beside the markdown. Default location:
``<run>/report/report.md``. Every file is written atomically.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness import runfolder
from harness.analysis import crossbackend, plots
from harness.analysis import findings as findings_mod
from harness.analysis.compare import (
    DEFAULT_TOLERANCES,
    TABLE_HEADERS,
    Comparison,
    flatten,
    legend_lines,
    table_rows,
)
from harness.errors import BenchError
from harness.jsonio import atomic_write_bytes
from harness.results import CellResult, RunInfo, Throughput

REPORT_NAME = runfolder.REPORT_NAME


def _pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def _rate(t: Throughput | None) -> str:
    if t is None:
        return ""
    return f"{t.images_per_s:,.0f} [{t.images_per_s_p25:,.0f}–{t.images_per_s_p75:,.0f}]"


def _mem(c: CellResult) -> float | None:
    return None if c.peak_memory_bytes is None else c.peak_memory_bytes / 2**20


def _to_target(c: CellResult) -> str:
    """Epochs and training seconds until val accuracy reached the cell's target."""
    if c.target_accuracy is None or not c.ok:
        return ""
    goal = f"{100 * c.target_accuracy:.0f}%"
    if c.epochs_to_target is None:
        return f"{goal}: not reached"
    secs = "" if c.time_to_target_s is None else f", {c.time_to_target_s:,.1f} s"
    return f"{goal}: {c.epochs_to_target} ep{secs}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _cell(text: str) -> str:
    """Markdown-table-safe text (pipes and newlines would break the row)."""
    return text.replace("|", "\\|").replace("\n", " ")


def matrix_rows(cells: list[CellResult]) -> list[list[Any]]:
    """One row per cell, in the experiment's format plus what our harness measures."""
    rows = []
    for c in sorted(cells, key=lambda c: (c.dataset, plots.strategy_key(c.strategy), c.cell_id)):
        t = c.train_throughput
        status = (
            "ok"
            if c.ok
            else f"{c.status}: " + _cell((c.error or "").splitlines()[0][:80] if c.error else "")
        )
        chance = findings_mod.chance_check(c)
        if chance is not None and not chance.learned:
            status = f"ok, did not learn (chance {100 * chance.chance:.1f}%)"
        rows.append(
            [
                c.dataset,
                c.strategy,
                findings_mod.EXPERIMENT_NAMES.get(c.strategy, ""),
                c.precision,
                c.seed,
                c.backend,
                _pct(c.best_train_accuracy),
                _pct(c.best_val_accuracy),
                _pct(c.test_accuracy),
                len(c.history) if c.history else "",
                _to_target(c),
                t.batch_size if t else "",
                _rate(t) + (SHARED_MARK if t and _shared(c) else ""),
                _rate(c.inference_throughput),
                _mem(c),
                c.wall_seconds,
                status,
            ]
        )
    return rows


MATRIX_HEADERS = (
    "dataset",
    "strategy",
    "experiment's name",
    "precision",
    "seed",
    "backend",
    "best train acc %",
    "best val acc %",
    "test acc %",
    "epochs",
    "to target val acc",
    "batch",
    "train img/s median [IQR]",
    "inference img/s median [IQR]",
    "peak memory MiB",
    "wall s",
    "status",
)


SHARED_MARK = " ‡"


def _shared(c: CellResult) -> bool:
    """Whether the cell measured its throughput while other cells shared its CPU
    (``--jobs N``, or several Dask workers on one host without a GPU each)."""
    return bool((c.extra.get("placement") or {}).get("shared"))


def _scale_out_notes(cells: list[CellResult]) -> list[str]:
    """The shared-throughput footnote and the repeats table (median, IQR, CV across the
    repeats' processes), for the cells that have them."""
    lines: list[str] = []
    if any(_shared(c) and c.train_throughput for c in cells):
        lines += [
            f"{SHARED_MARK.strip()} throughput measured while other cells shared the CPU "
            "(`--jobs N`, or Dask workers sharing a host): lower than on an idle machine, "
            "and not comparable with a serial baseline.",
            "",
        ]
    rows = []
    for c in sorted(cells, key=lambda c: c.cell_id):
        summary = ((c.extra.get("repeats") or {}).get("summary")) or {}
        if summary:
            rows.append([
                c.cell_id, summary.get("n"), summary.get("median"), summary.get("iqr"),
                100 * float(summary.get("cv") or 0.0),
            ])  # fmt: skip
    if rows:
        lines += [
            "Repeats (each a fresh cell process; train images/s, the spread across repeats):",
            "",
            tabulate(
                rows,
                headers=("cell", "repeats", "median img/s", "IQR img/s", "CV %"),
                tablefmt="github",
                floatfmt=".1f",
            ),
            "",
        ]
    return lines


def pivot_rows(cells: list[CellResult]) -> tuple[list[str], list[list[str]]]:
    """The experiment's summary table: dataset rows × strategy columns, "train / val %"."""
    strategies = sorted({c.strategy for c in cells}, key=plots.strategy_key)
    table: dict[str, dict[str, list[CellResult]]] = defaultdict(lambda: defaultdict(list))
    several = len({c.backend for c in cells}) > 1  # then one row per dataset and backend
    for c in cells:
        table[f"{c.dataset} ({c.backend})" if several else c.dataset][c.strategy].append(c)
    rows = []
    for dataset in sorted(table):
        row = [dataset]
        for s in strategies:
            group = [c for c in table[dataset].get(s, []) if c.ok]
            if not group:
                statuses = sorted({c.status for c in table[dataset].get(s, [])})
                row.append("/".join(statuses))
                continue
            tr = [c.best_train_accuracy for c in group if c.best_train_accuracy is not None]
            va = [c.best_val_accuracy for c in group if c.best_val_accuracy is not None]
            mean = lambda v: f"{100 * sum(v) / len(v):.0f}" if v else "?"  # noqa: E731
            row.append(f"{mean(tr)} / {mean(va)}")
        rows.append(row)
    return ["dataset", *strategies], rows


def _throughput_statement(cells: list[CellResult]) -> str:
    seen = sorted(
        {
            (t.phase, t.batch_size, t.precision, t.input, t.warmup_steps)
            for c in cells
            for t in (c.train_throughput, c.inference_throughput)
            if t is not None
        }
    )
    if not seen:
        return "No throughput was measured."
    parts = [
        f"{phase}: batch {b}, {p}, {inp} input, {w} warm-up step(s) excluded"
        for phase, b, p, inp, w in seen
    ]
    return (
        "Throughput is images per second from the median step time (IQR in brackets); "
        + "; ".join(parts)
        + "."
    )


def environment_rows(env: dict[str, Any]) -> list[list[str]]:
    return [[k, "null" if v is None else str(v)] for k, v in sorted(flatten(env).items())]


def _findings_section(f: findings_mod.Findings) -> list[str]:
    out = ["## Findings", ""]
    out.append(
        f'Computed from this run\'s numbers; "competitive" means within {f.tolerance_points:g} '
        "accuracy points (the profile's tolerance). Strategy accuracy is the mean over its ok "
        "cells (seeds × precisions). A cell *did not learn* when its best validation accuracy "
        "is within noise of chance (binomial test, see `harness/analysis/findings.py`); a "
        "strategy with such a cell is not ranked, so no winner is declared over it."
    )
    out.append("")
    for d in f.datasets:
        out.append(f"- {findings_mod.winner_sentence(d, f.tolerance_points)}")
        if d.failed:
            out.append(f"  - not ranked (failed or skipped): {', '.join(d.failed)}")
        if d.did_not_learn:
            notes = "; ".join(findings_mod.did_not_learn_note(c) for c in d.did_not_learn)
            out.append(f"  - not ranked, did not learn (within noise of chance): {notes}")
    out.append("")
    out.append("### Rules of thumb of the transfer-learning notes")
    out.append("")
    rows = [[r.regime, r.rule, r.dataset or "—", f"**{r.status}**", r.evidence] for r in f.rules]
    out.append(
        tabulate(
            rows, headers=["regime", "rule", "dataset", "verdict", "evidence"], tablefmt="github"
        )
    )
    out.append("")
    regimes = [
        [d.dataset, d.regime.data or "?", d.regime.domain or "?", d.regime.source]
        for d in f.datasets
    ]
    out.append(
        "Dataset regimes (and where they came from). A *derived* regime is a heuristic "
        f"(fewer than {findings_mod.SMALL_TRAIN_IMAGES} train images = small data; a grayscale "
        "dataset = different domain from the colour pretraining source); a `regime` field "
        '(e.g. `{"data": "big", "domain": "similar"}`) in the dataset\'s manifest entry '
        "overrides it."
    )
    out.append("")
    out.append(tabulate(regimes, headers=["dataset", "data", "domain", "from"], tablefmt="github"))
    out.append("")
    return out


def _nothing_measured(cells: list[CellResult]) -> list[str]:
    """The report of a run in which no cell ran: say so first, with the reasons, counted."""
    reasons: dict[str, int] = {}
    for c in cells:
        why = (c.error or c.status).splitlines()[0] if not c.ok else ""
        reasons[why] = reasons.get(why, 0) + 1
    lines = [
        "",
        f"**Nothing was measured: none of the {len(cells)} cells ran** "
        "(`bench all` exits 4, nothing to compare). Why:",
        "",
    ]
    lines += [f"- {n} cell(s): {_cell(why)}" for why, n in sorted(reasons.items())]
    return lines


def _baseline_section(comparison: Comparison | None, profile: str, plot: str | None) -> list[str]:
    out = ["## Baseline comparison", ""]
    if comparison is None:
        out += [
            f"No baseline for profile `{profile}`; accept one with `bench baseline accept RUN`.",
            "",
        ]
        return out
    rows = [[_cell(str(x)) for x in row] for row in table_rows(comparison)]
    out += [
        f"Baseline: run `{comparison.baseline_run_id}` ({comparison.baseline_path}).",
        "",
        f"**{comparison.summary()}**",
        "",
        *[f"- {_cell(line)}" for line in legend_lines(comparison)],
        "",
        tabulate(rows, headers=TABLE_HEADERS, tablefmt="github"),
        "",
    ]
    if comparison.reproducibility_differences:
        out += [
            "What differs from the baseline's environment in what decides reproducibility "
            "(same run key: bit-identical on CPU; otherwise within calibrated noise):",
            "",
            *[f"- {_cell(line)}" for line in comparison.reproducibility_differences],
            "",
        ]
    if comparison.environment_differences:
        diff = [
            [k, _cell(str(b)), _cell(str(r))]
            for k, (b, r) in comparison.environment_differences.items()
        ]
        out += [
            "Environment differences from the baseline:",
            "",
            tabulate(diff, headers=["key", "baseline", "run"], tablefmt="github"),
            "",
        ]
    if plot:
        out += [f"![baseline deltas]({plot})", ""]
    return out


def _backends_section(
    cells: list[CellResult], comparison: Comparison | None, info: RunInfo
) -> list[str]:
    """Backends side by side (harness.analysis.crossbackend): this run's backends, or this run
    beside the run or baseline it was compared with; nothing when there is no pair."""
    pairs = comparison.backends if comparison is not None else ()
    pairs = pairs or crossbackend.within_run(cells)
    if not pairs:
        return []
    tol = float(info.tolerances.get("accuracy_points", DEFAULT_TOLERANCES["accuracy_points"]))
    rows = [[_cell(x) for x in r] for r in crossbackend.pair_rows(pairs)]
    return [
        "## Backends side by side",
        "",
        "The same cell on two backends (or in two runs): accuracy difference in points and "
        "throughput ratio other / reference (median images/s, steady state). Per strategy "
        "(mean difference, geometric mean of the ratios over its datasets):",
        "",
        tabulate(
            crossbackend.strategy_rows(pairs),
            headers=crossbackend.STRATEGY_HEADERS,
            tablefmt="github",
            disable_numparse=True,
        ),
        "",
        "Per cell:",
        "",
        tabulate(rows, headers=crossbackend.PAIR_HEADERS, tablefmt="github", disable_numparse=True),
        "",
        crossbackend.accuracy_line(pairs, tol),
        "First-epoch overhead = first epoch minus the median later epoch (tracing and "
        "compilation); on JAX each cell's result also holds the compile events it saw "
        "(`extra.compile.observed`).",
        "",
    ]


def render_markdown(
    info: RunInfo,
    cells: list[CellResult],
    found: findings_mod.Findings,
    comparison: Comparison | None,
    plot_paths: dict[str, str],
) -> str:
    """The whole report as markdown text (pure; ``plot_paths`` are relative links), one
    section after another."""
    lines = _header_section(info, cells, comparison)
    lines += _matrix_section(info, cells)
    lines += _backends_section(cells, comparison, info)
    lines += _findings_section(found)
    lines += _baseline_section(comparison, info.profile, plot_paths.get("baseline"))
    lines += _figures_section(plot_paths)
    lines += ["## Environment", ""]
    lines += [
        tabulate(environment_rows(info.environment), headers=["key", "value"], tablefmt="github"),
        "",
    ]
    return "\n".join(lines)


def _header_section(
    info: RunInfo, cells: list[CellResult], comparison: Comparison | None
) -> list[str]:
    """The title, the run's provenance, its cell counts and the baseline verdict."""
    ok = sum(1 for c in cells if c.ok)
    failed = [c.cell_id for c in cells if c.status == "failed"]
    skipped = [c.cell_id for c in cells if not c.ok and c.status != "failed"]
    planned_missing = sorted(set(info.cell_ids) - {c.cell_id for c in cells})
    return [
        f"# transfer-bench report: run `{info.run_id}`",
        "",
        f"Profile `{info.profile}`; started {info.started_at}, finished {info.finished_at or '—'}; "
        f"git commit `{info.git_commit or 'unknown'}`; "
        f"manifest digest `{info.manifest_digest[:16]}`.",
        "",
        f"Cells: {len(cells)} with results ({ok} ok, {len(failed)} failed"
        + (f", {len(skipped)} skipped" if skipped else "")
        + ")"
        + (f"; {len(planned_missing)} planned without a result" if planned_missing else "")
        + ".",
        *(
            ["", f"Baseline verdict: **{comparison.summary()}** (details below)."]
            if comparison is not None
            else []
        ),
        *(_nothing_measured(cells) if not ok else []),
        "",
    ]


def _matrix_section(info: RunInfo, cells: list[CellResult]) -> list[str]:
    """The results matrix as the experiment's table, then every cell, and what did not run."""
    failed = [c.cell_id for c in cells if c.status == "failed"]
    skipped = [c.cell_id for c in cells if not c.ok and c.status != "failed"]
    planned_missing = sorted(set(info.cell_ids) - {c.cell_id for c in cells})
    lines = [
        "## Results matrix",
        "",
        "Best train / validation accuracy (%) per dataset and strategy, as in the experiment's "
        "results table (mean over seeds and precisions):",
        "",
    ]
    headers, prow = pivot_rows(cells)
    lines += [tabulate(prow, headers=headers, tablefmt="github"), ""]
    lines += ["Every cell:", "", _throughput_statement(cells), ""]
    lines += [
        tabulate(
            matrix_rows(cells),
            headers=MATRIX_HEADERS,
            tablefmt="github",
            floatfmt=".1f",
            missingval="",
        ),
        "",
    ]
    lines += _scale_out_notes(cells)
    kinds = sorted({c.peak_memory_kind for c in cells if c.peak_memory_kind})
    if kinds:
        lines += [f"Peak memory is the {'; '.join(kinds)}.", ""]
    if failed:
        lines += [f"Failed cells: {', '.join(failed)}.", ""]
    if skipped:
        lines += [f"Skipped cells: {', '.join(skipped)}.", ""]
    if planned_missing:
        lines += [f"Planned but without a result: {', '.join(planned_missing)}.", ""]
    return lines


def _figures_section(plot_paths: dict[str, str]) -> list[str]:
    """Links to the plots: learning curves per dataset, accuracy vs throughput, throughput."""
    lines = ["## Figures", ""]
    for key, rel in plot_paths.items():
        if key.startswith("curves:"):
            lines += [
                f"### Learning curves: {key.split(':', 1)[1]}",
                "",
                f"![learning curves]({rel})",
                "",
            ]
    if "scatter" in plot_paths:
        lines += [
            "### Accuracy vs training throughput",
            "",
            f"![accuracy vs throughput]({plot_paths['scatter']})",
            "",
        ]
    if "throughput" in plot_paths:
        lines += [
            "### Throughput per cell",
            "",
            f"![throughput per cell]({plot_paths['throughput']})",
            "",
        ]
    return lines


def _load_manifest() -> Any | None:
    """The manifest, if one can be read (only used for dataset regimes)."""
    from harness.manifest import load_manifest

    try:
        return load_manifest()
    except (BenchError, OSError):  # no manifest here: regimes are derived from the cells
        return None


def write_report(
    run_dir: Path, *, comparison: Comparison | None = None, out_dir: Path | None = None
) -> Path:
    """Write ``report.md`` and its PNGs for ``run_dir``; returns the markdown path."""
    run_dir = Path(run_dir)
    info = runfolder.read_run(run_dir)
    cells = runfolder.read_cells(run_dir)
    out = Path(out_dir) if out_dir is not None else runfolder.report_dir(run_dir)
    plot_dir = out / runfolder.PLOTS
    plot_dir.mkdir(parents=True, exist_ok=True)
    tol = float(info.tolerances.get("accuracy_points", DEFAULT_TOLERANCES["accuracy_points"]))
    found = findings_mod.compute(cells, tolerance_points=tol, manifest=_load_manifest())
    rel: dict[str, str] = {}
    by_dataset: dict[str, list[CellResult]] = defaultdict(list)
    for c in cells:
        by_dataset[c.dataset].append(c)
    for dataset in sorted(by_dataset):
        name = f"curves_{_safe(dataset)}.png"
        plots.learning_curves(dataset, by_dataset[dataset], plot_dir / name)
        rel[f"curves:{dataset}"] = f"plots/{name}"
    plots.accuracy_vs_throughput(cells, plot_dir / "accuracy_vs_throughput.png")
    rel["scatter"] = "plots/accuracy_vs_throughput.png"
    plots.throughput_bars(cells, plot_dir / "throughput.png")
    rel["throughput"] = "plots/throughput.png"
    if comparison is not None:
        plots.baseline_deltas(comparison, plot_dir / "baseline_deltas.png")
        rel["baseline"] = "plots/baseline_deltas.png"
    text = render_markdown(info, cells, found, comparison, rel)
    path = out / REPORT_NAME
    atomic_write_bytes(path, text.encode())
    return path
