"""Build the dashboard: one self-contained ``index.html`` plus a copy of each run's report.

What the page holds, for one profile (default: the profile of the newest run):

* the latest run's results matrix and every cell (:mod:`harness.analysis.report`'s tables);
* the baseline verdicts of the latest run (:mod:`harness.analysis.compare`), or why there are none;
* per-cell trend charts (:mod:`harness.dashboard.charts`) from the history index, one line
  per machine and lock, detected steps marked and listed;
* the environment differences between any two runs (two selectors; the fingerprints are
  embedded as JSON and compared in the page, the newest pair already filled in);
* every run, linking to its ``report.md`` (copied with its plots into ``runs/<run>/``).

Nothing is loaded at view time: styles, script and charts are inline, and the page's
Content-Security-Policy forbids any other source. The site is written to a temporary
folder beside ``--out`` and renamed into place; an existing ``--out`` is replaced only if it
is an earlier dashboard (it holds :data:`MARKER`).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from harness import history, outputs, results, runfolder
from harness.analysis import compare, report
from harness.dashboard import charts
from harness.errors import BenchError, InputError
from harness.history import gate
from harness.history.index import IndexUpdate

MARKER = outputs.DASHBOARD_MARKER
SUMMARISED_ENV_KEYS = ("git_dirty_paths",)


@dataclass(frozen=True)
class Dashboard:
    """What :func:`build_site` wrote."""

    out_dir: Path
    index_html: Path
    profile: str
    runs: int
    series: int
    steps: int
    update: IndexUpdate
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        return (
            f"dashboard: {self.index_html} (profile {self.profile}: {self.runs} runs, "
            f"{self.series} series, {self.steps} steps)"
        )


def _asset(name: str) -> str:
    return resources.files("harness.dashboard").joinpath("assets", name).read_text()


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _table(headers: list[str], rows: list[list[Any]], *, table_id: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        tds = []
        for v in row:
            if isinstance(v, float):
                tds.append(f'<td class="num">{v:,.1f}</td>')
            elif isinstance(v, int):
                tds.append(f'<td class="num">{v}</td>')
            else:
                tds.append(f"<td>{esc(v)}</td>")
        body.append(f"<tr>{''.join(tds)}</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _verdicts_html(comparison: compare.Comparison | None, why_none: str) -> str:
    if comparison is None:
        return f'<p id="verdict-summary" class="none">{esc(why_none)}</p>'
    rows = compare.table_rows(comparison)
    head = "".join(f"<th>{esc(h)}</th>" for h in compare.TABLE_HEADERS)
    body = "".join(
        f'<tr class="verdict-{_slug(row[1])}">'
        + "".join(f"<td>{esc(v)}</td>" for v in row)
        + "</tr>"
        for row in rows
    )
    return (
        f'<p id="verdict-summary"><strong>{esc(comparison.summary())}</strong></p>'
        f"<p>Baseline: run <code>{esc(comparison.baseline_run_id)}</code> "
        f"({esc(comparison.baseline_path)}). {esc(comparison.environment_line())}</p>"
        f'<table id="verdict-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def _flat_env(environment: dict[str, Any]) -> dict[str, Any]:
    flat = compare.flatten(environment) if isinstance(environment, dict) else {}
    return {k: v for k, v in flat.items() if k not in SUMMARISED_ENV_KEYS}


def _show(value: Any) -> str:
    if value is None:
        return "—"
    return value if isinstance(value, str) else json.dumps(value)


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element (no closing tag, no comment opener)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _copy_report(run_dir: Path, dest: Path) -> bool:
    """Copy ``<run>/report`` (report.md + plots) into ``dest``; False if there is none."""
    src = runfolder.report_dir(run_dir)
    if not (src / runfolder.REPORT_NAME).is_file():
        return False
    shutil.copytree(src, dest)
    return True


def build_site(
    out_dir: Path,
    runs_dir: Path,
    *,
    profile: str | None = None,
    db_path: Path | None = None,
    baseline_path: Path | None = None,
) -> Dashboard:
    """Index ``runs_dir``, then write the dashboard of ``profile`` into ``out_dir``."""
    out_dir = Path(out_dir)
    runs_dir = Path(runs_dir)
    _check_out(out_dir, runs_dir)
    update = history.update_index(runs_dir, db_path)
    conn = history.connect(update.db_path)
    try:
        all_runs = history.trends.runs(conn)
        if not all_runs:
            raise InputError(f"runs folder {runs_dir}: no readable runs to show")
        profile = profile or all_runs[-1].profile
        runs = [r for r in all_runs if r.profile == profile]
        if not runs:
            known = sorted({r.profile for r in all_runs})
            raise InputError(f"--profile {profile!r}: no runs of it in {runs_dir}; have {known}")
        series = history.query(conn, profile=profile)
        envs = {r.environment_digest: history.trends.environment(conn, r.environment_digest)
                for r in runs}  # fmt: skip
    finally:
        conn.close()

    latest = next((r for r in reversed(runs) if not r.dry_run), runs[-1])  # numbers, not a check
    latest_dir = runs_dir / latest.folder
    info = runfolder.read_run(latest_dir)
    cells = runfolder.read_cells(latest_dir)
    notes: list[str] = []
    comparison, why_none = None, ""
    try:
        comparison = gate.comparison(latest_dir, baseline_path, history_db=update.db_path)
    except BenchError as exc:
        if baseline_path is not None:
            raise
        why_none = f"The baseline of profile {profile} cannot be used: {exc.message}"
        notes.append(why_none)
    else:
        if comparison is None:
            why_none = (
                f"No baseline for profile {profile}; accept one with `bench baseline accept RUN`."
            )

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        reports = {
            r.folder: _copy_report(runs_dir / r.folder, tmp / "runs" / r.folder) for r in runs
        }
        page = _render(profile, runs, latest, info, cells, comparison, why_none, series, envs,
                       reports)  # fmt: skip
        (tmp / "index.html").write_text(page, encoding="utf-8")
        (tmp / MARKER).write_text(f"written by bench dashboard at {_now()}\n")
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Dashboard(
        out_dir=out_dir,
        index_html=out_dir / "index.html",
        profile=profile,
        runs=len(runs),
        series=len(series),
        steps=sum(len(s.steps) for s in series),
        update=update,
        notes=tuple(notes),
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check_out(out_dir: Path, runs_dir: Path) -> None:
    outputs.claim(out_dir, outputs.DASHBOARD, option="--out")
    resolved = out_dir.resolve()
    if resolved == runs_dir.resolve() or runs_dir.resolve() in resolved.parents:
        raise InputError(f"--out {out_dir}: inside the runs folder {runs_dir}; choose another")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {out_dir}: cannot create its parent folder: {exc}") from None


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``tmp`` (the old dashboard removed only once the new one is in)."""
    os.chmod(tmp, 0o777 & ~_umask())
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _run_label(run: history.RunRow) -> str:
    return f"{run.started_at[:16].replace('T', ' ')} · {run.run_id}"


def _render(
    profile: str,
    runs: list[history.RunRow],
    latest: history.RunRow,
    info: results.RunInfo,
    cells: list[results.CellResult],
    comparison: compare.Comparison | None,
    why_none: str,
    series: list[history.Series],
    envs: dict[str, dict[str, Any]],
    reports: dict[str, bool],
) -> str:
    """The page: each section rendered by its own function, then put into page.html."""
    machines = sorted({s.machine for s in series} | {_machine(r) for r in runs})
    headers, pivot = report.pivot_rows(cells)
    n_steps = sum(len(s.steps) for s in series)
    values = {
        "profile": esc(profile),
        "css": _asset("dashboard.css"),
        "js": _asset("dashboard.js"),
        "summary": esc(
            f"{len(runs)} runs from {runs[0].started_at[:10]} to {runs[-1].started_at[:10]} on "
            f"{len(machines)} machine/lock combination(s); {n_steps} step(s) detected. "
            f"Generated {_now()}."
        ),
        "latest_run": esc(latest.run_id),
        "latest_meta": _latest_meta(info, latest, reports),
        "matrix": _table(headers, pivot, table_id="matrix"),
        "cells": _table(list(report.MATRIX_HEADERS), report.matrix_rows(cells), table_id="cells"),
        "verdicts": _verdicts_html(comparison, why_none),
        "trends_intro": esc(
            "One chart per cell: best validation accuracy, train and inference throughput "
            "(images/s, median of measured steps) and peak memory, across the runs of this "
            "profile in time order. One line per machine and lock; a dashed line marks a "
            "step found by PELT (ruptures, L1 cost, penalty 2·b·ln n), at the first run of "
            "the new level, labelled with its size."
        ),
        **_trends_section(series, runs, machines),
        **_environment_section(runs, latest, envs),
        "runs": _runs_table(runs, reports),
        "footer": esc(
            "Written by bench dashboard from the history index over the run folders "
            "(the run folders are the source of truth). Self-contained: nothing is loaded "
            "from the network."
        ),
    }
    return Template(_asset("page.html")).substitute(values)


def _latest_meta(info: results.RunInfo, latest: history.RunRow, reports: dict[str, bool]) -> str:
    """The line under the latest run's name: when, which commit, where, how it went."""
    link = (
        f' · <a href="runs/{esc(latest.folder)}/report.md">report.md</a>'
        if reports.get(latest.folder)
        else ""
    )
    return (
        f"started {esc(info.started_at)}, finished {esc(info.finished_at or '—')} · commit "
        f"<code>{esc(info.git_commit or 'unknown')}</code> · {esc(_machine(latest))} · "
        f"{latest.cells_ok} ok, {latest.cells_failed} failed{link}"
    )


def _trends_section(
    series: list[history.Series], runs: list[history.RunRow], machines: list[str]
) -> dict[str, str]:
    """The trends: a legend of machines and one chart per cell with the steps found."""
    machine_index = {m: i for i, m in enumerate(machines)}
    legend = "".join(
        f'<li><span class="swatch" style="background:{charts.colour(i)}"></span>{esc(m)}</li>'
        for i, m in enumerate(machines)
    )
    run_order = [r.folder for r in runs]
    labels = [r.started_at[5:10] for r in runs]
    by_cell: dict[str, list[history.Series]] = {}
    for s in series:
        by_cell.setdefault(s.cell_id, []).append(s)
    articles = []
    for n, (cell_id, cell_series) in enumerate(sorted(by_cell.items())):
        svg = charts.trend_svg(cell_series, run_order, labels, machine_index, prefix=f"c{n}")
        steps = [
            f'<li class="{_direction(st, s.spec)}" data-metric="{esc(s.metric)}" '
            f'data-run="{esc(st.run_id)}">{esc(s.spec.label)} on {esc(s.machine)}: '
            f"{esc(st.describe(s.spec))}</li>"
            for s in cell_series
            for st in s.steps
        ]
        steps_html = (
            f'<ul class="steps">{"".join(steps)}</ul>'
            if steps
            else '<p class="none">no steps detected</p>'
        )
        articles.append(
            f'<article class="trend" id="trend-{_slug(cell_id)}" data-cell="{esc(cell_id)}">'
            f"<h3><code>{esc(cell_id)}</code></h3>"
            f'<div class="chart" role="img" aria-label="trends of {esc(cell_id)}">{svg}</div>'
            f"{steps_html}</article>"
        )
    return {
        "legend": legend,
        "trends": "".join(articles) or '<p class="none">no trends (no ok cells indexed)</p>',
    }


def _environment_section(
    runs: list[history.RunRow], latest: history.RunRow, envs: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """The environment differences: the latest run against the one before it (two run
    pickers, the differing fingerprint keys, and every fingerprint for the page's script)."""
    flat = {digest: _flat_env(env) for digest, env in envs.items()}
    env_data = {"runs": {r.folder: r.environment_digest for r in runs}, "environments": flat}
    at = runs.index(latest)
    previous = runs[at - 1] if at > 0 else runs[min(at + 1, len(runs) - 1)]

    def options(selected: str) -> str:
        return "".join(
            f'<option value="{esc(r.folder)}"{" selected" if r.folder == selected else ""}>'
            f"{esc(_run_label(r))}</option>"
            for r in reversed(runs)
        )

    env_a, env_b = flat[previous.environment_digest], flat[latest.environment_digest]
    keys = sorted(set(env_a) | set(env_b))
    differing = [k for k in keys if _show(env_a.get(k)) != _show(env_b.get(k))]
    env_rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{esc(_show(env_a.get(k)))}</td>"
        f"<td>{esc(_show(env_b.get(k)))}</td></tr>"
        for k in differing
    )
    env_summary = (
        f"{len(differing)} of {len(keys)} fingerprint keys differ between "
        f"{previous.folder} and {latest.folder}."
    )
    return {
        "options_a": options(previous.folder),
        "options_b": options(latest.folder),
        "env_summary": esc(env_summary),
        "env_rows": env_rows,
        "env_data": _script_json(env_data),
    }


def _runs_table(runs: list[history.RunRow], reports: dict[str, bool]) -> str:
    """Every run of the profile, newest first, with a link to its report."""
    rows = []
    for r in reversed(runs):
        link = (
            f'<a href="runs/{esc(r.folder)}/report.md">report.md</a>'
            if reports.get(r.folder)
            else '<span class="none">no report</span>'
        )
        rows.append(
            f'<tr data-run="{esc(r.folder)}"><td><code>{esc(r.run_id)}</code></td>'
            f"<td>{esc(r.started_at)}</td><td><code>{esc((r.git_commit or '—')[:12])}</code></td>"
            f"<td>{esc(_machine(r))}</td>"
            f'<td class="num">{r.cells_ok}</td><td class="num">{r.cells_failed}</td>'
            f'<td class="num">{r.cells_other}</td>'
            f"<td>{'dry run' if r.dry_run else ''}</td><td>{link}</td></tr>"
        )
    return (
        '<table id="runs-table"><thead><tr><th>run</th><th>started</th><th>commit</th>'
        "<th>machine · lock</th><th>ok</th><th>failed</th><th>other</th><th></th>"
        f"<th>report</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _direction(step: history.StepFound, spec: history.MetricSpec) -> str:
    """``better`` or ``worse``: a rise is better for accuracy and rates, worse for memory."""
    return "better" if (step.absolute > 0) == spec.higher_is_better else "worse"


def _machine(r: history.RunRow) -> str:
    lock = r.lock_digest[:8] if r.lock_digest else "not recorded"
    return f"{r.hardware_label} · lock {lock}"
