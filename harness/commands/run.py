"""``bench all``, ``bench run CELL``, ``bench list``, ``bench env``: running matrices.

Thin on purpose: argument parsing and printing here; the work is in
:mod:`harness.matrix` and :func:`harness.orchestrate.run_matrix`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness.errors import EXIT_FAILURE, EXIT_OK
from harness.matrix import default_profile, load_matrix


def register(sub: Any) -> None:
    def profile_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--profile",
            default=None,
            help="matrix name in benchmarks/ (or a .toml path); default $BENCH_PROFILE or smoke",
        )

    def run_args(p: argparse.ArgumentParser) -> None:
        profile_arg(p)
        p.add_argument("--run-id", default=None, help="run folder name (default: UTC time-profile)")
        p.add_argument("--runs-dir", type=Path, default=None, help="default: reports/runs")
        p.add_argument("--backend", default=None, help="Keras backend: tensorflow, jax or torch")
        p.add_argument(
            "--dry-run",
            action="store_true",
            help="build every model at full size, run a couple of steps on random stand-ins",
        )
        p.add_argument("--allow-unpinned", action="store_true", help="accept unpinned inputs")

    p = sub.add_parser("all", help="run every cell of a matrix (each in its own process)")
    run_args(p)
    p.add_argument("--only", default=None, help="cell-id glob(s) or substring(s), comma-separated")
    p.add_argument("--resume", action="store_true", help="complete a run: skip finished cells")
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="baseline to compare with at the end (default: reports/baselines/<profile>.json)",
    )
    p.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the comparison with the stored baseline and the report at the end",
    )
    p.set_defaults(func=cmd_all)

    p = sub.add_parser("run", help="run one cell of a matrix by its id")
    p.add_argument("cell", help="cell id, e.g. synth-few/fine-tune/float32/s0")
    run_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("list", help="list the cells of a matrix")
    profile_arg(p)
    p.add_argument("--json", action="store_true", help="the resolved matrix as JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("env", help="print the environment fingerprint (JSON)")
    p.add_argument("--backend", default=None)
    p.set_defaults(func=cmd_env)


def _run(args: argparse.Namespace, matrix: Any, cells: Any, resume: bool) -> tuple[Path, int]:
    from harness.orchestrate import run_matrix

    outcome = run_matrix(
        matrix,
        cells=cells,
        resume=resume,
        run_id=args.run_id,
        runs_dir=args.runs_dir,
        backend=args.backend,
        dry_run=args.dry_run,
        allow_unpinned=args.allow_unpinned,
    )
    n_ok = sum(1 for c in outcome.cells if c.status in ("ok", "resumed"))
    n_skip = sum(1 for c in outcome.cells if c.status == "skipped")
    print(
        f"run {outcome.run_id}: {n_ok} ok, {len(outcome.failed_cells)} failed, {n_skip} skipped "
        f"in {outcome.wall_seconds:.1f}s -> {outcome.run_dir}"
    )
    for cid in outcome.failed_cells:
        print(f"  failed: {cid}")
    return outcome.run_dir, EXIT_FAILURE if outcome.failed_cells else EXIT_OK


def cmd_all(args: argparse.Namespace) -> int:
    """Run the matrix, then compare with the stored baseline and write the report."""
    matrix = load_matrix(args.profile or default_profile())
    run_dir, code = _run(args, matrix, matrix.select(args.only), args.resume)
    if args.dry_run or args.no_compare:
        return code
    from harness.compare import after_run

    return max(code, after_run(run_dir, baseline_path=args.baseline))


def cmd_run(args: argparse.Namespace) -> int:
    matrix = load_matrix(args.profile or default_profile())
    return _run(args, matrix, (matrix.cell(args.cell),), resume=False)[1]


def cmd_list(args: argparse.Namespace) -> int:
    matrix = load_matrix(args.profile or default_profile())
    if args.json:
        print(json.dumps(matrix.to_dict(), indent=2, sort_keys=True))
        return EXIT_OK
    from tabulate import tabulate

    rows = [
        (c.cell_id, c.image_size, c.alpha, c.batch_size, c.epochs, c.weights, c.input)
        for c in matrix.cells
    ]
    print(f"profile {matrix.profile} ({matrix.path}): {matrix.description}")
    print(tabulate(rows, headers=("cell", "px", "alpha", "batch", "epochs", "weights", "input")))
    print(
        f"{len(matrix.cells)} cells; tolerances: accuracy ±{matrix.tolerances.accuracy_points} "
        f"points, throughput -{matrix.tolerances.throughput_relative:.0%}"
    )
    return EXIT_OK


def cmd_env(args: argparse.Namespace) -> int:
    from harness import env

    print(json.dumps(env.fingerprint(args.backend), indent=2, sort_keys=True))
    return EXIT_OK
