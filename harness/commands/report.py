"""``bench report RUN [--baseline FILE] [--out DIR]``: markdown + PNG report of a run."""

from __future__ import annotations

import argparse

from harness import outputs
from harness.commands import options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write report.md and plots for a run",
        description=(
            "Write <run>/report/report.md (or DIR/report.md): the results matrix, findings, "
            "baseline verdicts when a baseline exists, the environment, and PNG plots."
        ),
    )
    options.run(p)
    options.baseline(
        p,
        help="baseline file or run folder (default: the stored baseline of the run's key, "
        "else another of its profile's, if any)",
        metavar="FILE",
    )
    p.add_argument(
        "--out",
        type=outputs.option(outputs.REPORT, "--out"),
        metavar="DIR",
        help="output folder (default <run>/report): new, empty, or an earlier report",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: matplotlib costs seconds, and `bench --help` or
    # `bench --version` import every command module.
    from harness import runfolder
    from harness.analysis import baseline, report
    from harness.history import gate

    run_dir = runfolder.resolve(args.run)
    info = runfolder.read_run(run_dir)
    comparison = gate.comparison(run_dir, args.baseline)
    out = report.write_report(run_dir, comparison=comparison, out_dir=args.out)
    print(f"report: {out}")
    if comparison is not None:
        print(comparison.summary())
    else:
        print(f"no baseline for profile {info.profile} ({baseline.default_path(info.profile)})")
    return 0
