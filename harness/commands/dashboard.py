"""``bench dashboard --out DIR``: a self-contained static HTML site over the results history."""

from __future__ import annotations

import argparse

from harness import outputs, paths
from harness.commands import options
from harness.errors import EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard",
        help="write a static HTML dashboard: latest matrix, trends with steps, verdicts, runs",
        description=(
            "Index the run folders (as `bench history` does), then write DIR/index.html: the "
            "latest run's matrix, per-cell trend charts (accuracy, train and inference "
            "throughput, peak memory) with detected steps marked, the baseline verdicts, the "
            "environment differences between any two runs, and links to each run's report.md "
            "(copied into DIR/runs/). No server and no network needed to view it."
        ),
    )
    p.add_argument(
        "--out",
        type=outputs.option(outputs.DASHBOARD, "--out"),
        required=True,
        metavar="DIR",
        help="output folder: new, empty, or an earlier dashboard (replaced)",
    )
    options.runs_dir(p)
    options.history_db(p)
    options.profile(p, help="default: the profile of the newest run")
    options.baseline(
        p,
        help="baseline for the verdicts (default: reports/baselines/<profile>.json if it exists)",
        metavar="FILE",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.dashboard import build_site

    site = build_site(
        args.out,
        args.runs_dir or paths.runs_dir(),
        profile=args.profile,
        db_path=args.db,
        baseline_path=args.baseline,
    )
    for line in site.update.lines():
        print(line)
    for note in site.notes:
        print(f"dashboard: note: {note}")
    print(site.summary())
    return EXIT_OK
