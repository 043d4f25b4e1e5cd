"""``bench compare RUN [--baseline FILE] [--json]``: verdicts against the stored baseline."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.commands import options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare a run with its profile's baseline (exit 1 on regression or failed cell)",
        description=(
            "Compare a run with a baseline, cell by cell, in two tiers. Exact: where the run's "
            "reproducibility key (machine type, lock, backend and version, thread rule) is the "
            "baseline's, every deterministic cell must reproduce it bit for bit (history, "
            "accuracies, weights digest), else 'changed'. Statistical: elsewhere, accuracy "
            "against a quasi-binomial seed-noise model from the baseline's noise seeds, "
            "throughput against the spread of its repeats and this key's history, at the "
            "profile's false_alarm_rate per run, and never below its minimum effect "
            "(accuracy_points, throughput_relative). Throughput is gated only on the same "
            "hardware. Exit 1 on a regression, a changed or failed cell; 4 when fewer cells "
            "were compared than min_compared asks; 2 on bad input; else 0."
        ),
    )
    options.run(p)
    options.baseline(p, metavar="FILE")
    options.json(p, "print machine-readable verdicts")
    p.add_argument(
        "--accuracy-only",
        action="store_true",
        help="show throughput but gate only accuracy and reproduction (for runs measured "
        "under load, e.g. inside a test suite)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness import runfolder  # here: `bench --help` stays quick
    from harness.analysis import baseline, compare
    from harness.errors import InputError
    from harness.history import gate

    run_dir = runfolder.resolve(args.run)
    comparison = gate.comparison(run_dir, args.baseline, accuracy_only=args.accuracy_only)
    if comparison is None:
        info_profile = _profile(run_dir)
        raise InputError(
            f"no baseline for profile {info_profile!r} in {baseline.default_path(info_profile)}; "
            "accept one with `bench baseline accept RUN` or pass --baseline FILE"
        )
    print(compare.render_json(comparison) if args.json else compare.render_table(comparison))
    return comparison.exit_code


def _profile(run_dir: Path) -> str:
    from harness import runfolder

    return runfolder.read_run(run_dir).profile
