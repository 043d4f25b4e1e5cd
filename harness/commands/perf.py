"""``bench perf [--json] [--quick]``: measure this installation against its speed targets."""

from __future__ import annotations

import argparse
import sys

from harness.commands import options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "perf",
        help="measure this machine: harness overhead, loader, streaming, linear probe, "
        "prepare, cell start (exit 1 when a target is missed)",
        description=(
            "Measure, on this machine, six figures against their targets and print them as "
            "a table: harness train throughput / bare model.fit (>= 0.97), loader images/s "
            "at 224 px on one core (>= 10,000), streamed / in-memory training at 224 px "
            "(>= 0.97), the linear probe's speed-up over feature-extract at equal accuracy "
            "+-1 point (>= 10x), prepare images/s per core (>= 0.9 x plain Pillow), and the "
            "cost of starting a cell (reported). Runs in a temporary folder. Exit 1 when a "
            "target is missed, 2 on bad usage, else 0."
        ),
    )
    options.json(p, "machine-readable figures")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes, fewer rounds (about a minute on an idle 2-core machine); "
        "indicative figures",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness import perf

    report = perf.run_perf(
        quick=args.quick,
        progress=lambda line: print(f"bench perf: {line}", file=sys.stderr, flush=True),
    )
    print(perf.render_json(report) if args.json else perf.render_table(report))
    return report.exit_code
