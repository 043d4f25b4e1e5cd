"""``bench baseline accept RUN [--force]``: make a run its profile's baseline, explicitly."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baseline", help="manage stored baselines (reports/baselines/)")
    actions = p.add_subparsers(dest="baseline_command", metavar="ACTION")
    actions.required = True
    accept = actions.add_parser(
        "accept",
        help="store a run as its profile's baseline",
        description=(
            "Write reports/baselines/<profile>.json from RUN, with the run's environment "
            "fingerprint and tolerances. Refuses a run with failed cells unless --force."
        ),
    )
    accept.add_argument("run", metavar="RUN", help="run id under reports/runs/, or a run folder")
    accept.add_argument("--force", action="store_true", help="accept even if some cells failed")
    accept.add_argument(
        "--output", type=Path, metavar="FILE", help="write here instead of the default path"
    )
    accept.set_defaults(func=run_accept)


def run_accept(args: argparse.Namespace) -> int:
    from harness import baseline  # here, so that `bench --help` stays quick

    run_dir = baseline.resolve_run_dir(args.run)
    path, base = baseline.accept(run_dir, force=args.force, path=args.output)
    failed = sum(1 for c in base.cells if c.status == "failed")
    note = f" (forced: {failed} failed cell(s) included)" if failed else ""
    print(
        f"baseline for profile {base.profile}: run {base.run_id}, {len(base.cells)} cell(s)"
        f"{note} -> {path}"
    )
    commit = base.git_commit or ""
    if commit.endswith("+dirty"):
        print(f"note: the run was made from a checkout with uncommitted changes ({commit})")
    return 0
