"""``bench ab BASE_REV [HEAD_REV]``: interleaved A/B train throughput of two revisions."""

from __future__ import annotations

import argparse
import sys

from harness import outputs
from harness.commands import options


def register(sub: argparse._SubParsersAction) -> None:
    from harness.ab import DEFAULT_ROUNDS, DEFAULT_TOLERANCE, MIN_ROUNDS, P_THRESHOLD

    p = sub.add_parser(
        "ab",
        help="compare the train throughput of two git revisions, interleaved on this machine",
        description=(
            "Check BASE_REV (A) and HEAD_REV (B, default HEAD) out into temporary git "
            "worktrees and run the same cells alternately, A B A B ..., for --rounds rounds, "
            "each a fresh `bench run CELL` process with this environment (refused when a "
            "revision's uv.lock differs, unless --allow-env-drift). The cells come from this "
            "checkout's profile. Each round gives one sample per side: the median of its "
            "measured train step times, normalised by the round's own level. A cell regresses "
            f"when the Mann-Whitney U test over those samples gives p < {P_THRESHOLD:g} AND "
            "the throughput ratio B/A is below 1 - tolerance (--tolerance, else the profile's "
            f"[tolerances] ab_relative, else {DEFAULT_TOLERANCE:g}). Fewer than {MIN_ROUNDS} "
            "rounds with step times on both sides cannot reach that level: 'not enough "
            "data'. Uncommitted changes are not compared: commit them first. Exit 1 on a "
            "regression or a failed cell, 2 on bad input, else 0."
        ),
    )
    p.add_argument("base", metavar="BASE_REV", help="the revision to compare against (A)")
    p.add_argument("head", metavar="HEAD_REV", nargs="?", default="HEAD", help="default: HEAD")
    options.profile(p)
    options.only(p)
    p.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"A B pairs per cell (default {DEFAULT_ROUNDS}; at least {MIN_ROUNDS} to conclude)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        metavar="FRACTION",
        help="relative throughput drop that counts (overrides the profile's ab_relative)",
    )
    p.add_argument(
        "--allow-env-drift",
        action="store_true",
        help="compare even when a revision's uv.lock differs from this environment's",
    )
    options.json(p, "machine-readable verdicts and samples")
    p.add_argument(
        "--record",
        type=outputs.option(outputs.AB_RECORD, "--record"),
        default=None,
        metavar="FILE",
        help="rewrite FILE (the --json output) after every cell process, so an interrupted "
        "comparison keeps its samples; FILE must be new or an earlier record",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness import ab
    from harness.matrix import default_profile

    result = ab.run_ab(
        args.base,
        args.head,
        profile=args.profile or default_profile(),
        only=args.only,
        rounds=args.rounds,
        tolerance=args.tolerance,
        allow_env_drift=args.allow_env_drift,
        progress=lambda line: print(f"bench ab: {line}", file=sys.stderr, flush=True),
        record=args.record,
    )
    print(ab.render_json(result) if args.json else ab.render_table(result))
    return result.exit_code
