"""``bench history``: index the run folders, then show trends and steps per cell and metric."""

from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from harness import history, jsonio, paths
from harness.commands import options
from harness.errors import EXIT_OK

HISTORY_KIND = "transfer-bench.history"
HISTORY_SCHEMA = 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "history",
        help="index the run folders (SQLite) and show trends and steps across runs",
        description=(
            "Index every run folder under --runs-dir into an SQLite database (incrementally: "
            "only runs whose files changed are re-read; a corrupt run, or one of another "
            "schema, is skipped with one line naming it; the run folders stay the source of "
            "truth, so the database can be deleted and rebuilt). Then show, per cell and "
            "metric, one series per hardware identity and lock digest, with the steps found "
            "by PELT (ruptures, L1 cost, penalty 2 * b * ln(n) with b the robust noise "
            "scale; see harness/history/steps.py): each named by the first run and commit on "
            "the new level, with its size."
        ),
    )
    options.runs_dir(p)
    options.history_db(p)
    options.profile(p, help="only the runs of this profile")
    p.add_argument("--cell", default=None, help="cell-id glob(s) or substring(s), comma-separated")
    p.add_argument(
        "--metric",
        action="append",
        choices=list(history.METRICS),
        help="metric(s) to show (repeatable; default: all)",
    )
    p.add_argument(
        "--order", choices=history.ORDERS, default="time", help="order runs by time or commit"
    )
    p.add_argument("--steps-only", action="store_true", help="only the series that have steps")
    p.add_argument("--rebuild", action="store_true", help="delete the index and rebuild it")
    options.json(p, "the series and steps as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    runs_dir = args.runs_dir or paths.runs_dir()
    update = history.update_index(runs_dir, args.db, rebuild=args.rebuild)
    for line in update.lines():
        print(line, file=sys.stderr if args.json else sys.stdout)
    conn = history.connect(update.db_path)
    try:
        series = history.query(
            conn, profile=args.profile, cells=args.cell, metrics=args.metric, order=args.order
        )
    finally:
        conn.close()
    if args.steps_only:
        series = [s for s in series if s.steps]
    if args.json:
        data = {
            "runs_dir": str(runs_dir),
            "db": str(update.db_path),
            "order": args.order,
            "skipped": [s.__dict__ for s in update.skipped],
            "series": [s.to_dict() for s in series],
        }
        print(jsonio.dumps({**data, "kind": HISTORY_KIND, "schema": HISTORY_SCHEMA}), end="")
        return EXIT_OK
    print(render(series))
    return EXIT_OK


def render(series: list[history.Series]) -> str:
    """One row per series: cell, metric, machine, runs, latest value, steps."""
    if not series:
        return "no series (no indexed runs match; dry runs are not trended)"
    rows = []
    for s in series:
        steps = "; ".join(step.describe(s.spec) for step in s.steps) or "-"
        latest = s.points[-1]
        rows.append(
            [s.cell_id, s.spec.label, s.machine, len(s.points), s.spec.format(latest.value), steps]
        )
    machines = sorted({s.machine for s in series})
    n_steps = sum(len(s.steps) for s in series)
    return "\n".join(
        [
            tabulate(rows, headers=["cell", "metric", "machine · lock", "runs", "latest", "steps"]),
            "",
            f"{len(series)} series on {len(machines)} machine/lock combination(s); "
            f"{n_steps} step(s) found (PELT, L1 cost, penalty 2·b·ln n; steps < 5% "
            "(rates, memory), < 10% (wall time) or < 1 point (accuracy) are not reported)",
        ]
    )
