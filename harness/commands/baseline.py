"""``bench baseline accept RUN`` and ``bench baseline record``: stored baselines, per run key."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness.commands import options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baseline", help="manage stored baselines (reports/baselines/)")
    actions = p.add_subparsers(dest="baseline_command", metavar="ACTION")
    actions.required = True
    accept = actions.add_parser(
        "accept",
        help="store a run as its profile's baseline for its reproducibility key",
        description=(
            "Write reports/baselines/<profile>/<key>.json from RUN, with the run's environment "
            "fingerprint, tolerances and reproducibility key (machine type, lock, backend, "
            "thread rule): it adds the baseline for that key, or replaces it. Refuses a run "
            "with failed cells unless --force."
        ),
    )
    options.run(accept)
    accept.add_argument("--force", action="store_true", help="accept even if some cells failed")
    from harness import outputs

    accept.add_argument(
        "--output",
        type=outputs.option(outputs.BASELINE, "--output"),
        metavar="FILE",
        help="write here instead of the default path (a file that is not a baseline is refused)",
    )
    accept.set_defaults(func=run_accept)

    record = actions.add_parser(
        "record",
        help="run a profile with the repeats and noise seeds the gate is calibrated by, "
        "then accept it",
        description=(
            "Run the profile with each cell measured in [baseline] repeats processes and also "
            "run under [baseline] noise_seeds other seeds (the profile's [baseline] table; "
            "defaults 5 and 4), then accept the run as the baseline for this machine's "
            "reproducibility key. Run it on an idle machine: its spread is what later runs "
            "are judged against."
        ),
    )
    options.run_cells(record)
    record.add_argument(
        "--resume", action="store_true", help="complete an interrupted recording (same options)"
    )
    options.scale_out(record)
    record.set_defaults(func=run_record, parser=record)


def run_accept(args: argparse.Namespace) -> int:
    from harness import runfolder  # here, so that `bench --help` stays quick
    from harness.analysis import baseline

    run_dir = runfolder.resolve(args.run)
    path, base = baseline.accept(run_dir, force=args.force, path=args.output)
    _say_accepted(path, base)
    return 0


def _say_accepted(path: Path, base: Any) -> None:
    from harness.analysis import baseline

    failed = sum(1 for c in base.cells if c.status == "failed")
    note = f" (forced: {failed} failed cell(s) included)" if failed else ""
    print(
        f"baseline for profile {base.profile}, key {base.key_id}: run {base.run_id}, "
        f"{len(base.cells)} cell(s){note} -> {path}"
    )
    print(f"calibration: {baseline.calibration(base)}")
    commit = base.git_commit or ""
    if commit.endswith("+dirty"):
        print(f"note: the run was made from a checkout with uncommitted changes ({commit})")


def run_record(args: argparse.Namespace) -> int:
    from harness.analysis import baseline
    from harness.commands.run import execute
    from harness.errors import EXIT_OK
    from harness.matrix import default_profile, load_matrix

    matrix = load_matrix(args.profile or default_profile())
    if args.dry_run:
        from harness.errors import InputError

        raise InputError("bench baseline record --dry-run: a dry run cannot be a baseline")
    cells, recording = matrix.for_baseline()
    args.recording = recording
    args.command = "baseline record"  # the resume command it prints names this command
    run_dir, code = execute(args, matrix, cells, args.resume)
    if code != EXIT_OK:
        print(f"not accepted: run {run_dir.name} has failed cells; fix them and record again")
        return code
    path, base = baseline.accept(run_dir)
    _say_accepted(path, base)
    return EXIT_OK
