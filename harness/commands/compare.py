"""``bench compare RUN [--baseline FILE] [--json]``: verdicts against the stored baseline."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare a run with its profile's baseline (exit 1 on regression or failed cell)",
        description=(
            "Compare a run with a stored baseline, cell by cell. Accuracy (best val, and test "
            "when both have it): regression when it drops by more than the profile's "
            "accuracy_points, plus half the range across seeds on each side when a cell is "
            "repeated over seeds. Throughput (train, inference): regression when run/baseline "
            "images/s < 1 - (throughput_relative + (spread_baseline + spread_run) / 2), where "
            "spread = IQR/median of the step rate. Throughput is gated only when the hardware "
            "identity (CPU model/count, GPU name/count, backend and framework versions) of "
            "both fingerprints matches; accuracy always. Exit 1 on a regression or a failed "
            "cell, 2 on bad input, else 0."
        ),
    )
    p.add_argument("run", metavar="RUN", help="run id under reports/runs/, or a run folder")
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="FILE",
        help="baseline file (default: reports/baselines/<profile>.json)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable verdicts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness import baseline, compare  # here, so that `bench --help` stays quick

    run_dir = baseline.resolve_run_dir(args.run)
    comparison = compare.compare_run(run_dir, args.baseline)
    print(compare.render_json(comparison) if args.json else compare.render_table(comparison))
    return comparison.exit_code
