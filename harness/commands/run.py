"""``bench all``, ``bench run CELL``, ``bench list``, ``bench env``: running matrices.

Thin on purpose: argument parsing and printing here; the work is in
:mod:`harness.matrix` and :func:`harness.run.orchestrate.run_matrix`.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from harness import outputs
from harness.commands import options
from harness.errors import EXIT_FAILURE, EXIT_OK, RunStopped
from harness.matrix import default_profile, load_matrix

# The JSON that `bench list --json` and `bench env` print is versioned like every file.
LIST_KIND, LIST_SCHEMA = "transfer-bench.matrix", 1
ENV_KIND, ENV_SCHEMA = "transfer-bench.environment", 1


def register(sub: Any) -> None:
    p = sub.add_parser("all", help="run every cell of a matrix (each in its own process)")
    options.run_cells(p)
    options.only(p)
    p.add_argument("--resume", action="store_true", help="complete a run: skip finished cells")
    options.baseline(
        p,
        help="baseline file or run folder to compare with at the end (default: the stored "
        "baseline of this run's key in reports/baselines/<profile>/, else another of the "
        "profile's, statistically)",
    )
    p.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the comparison with the stored baseline and the report at the end "
        "(the history index is still updated)",
    )
    p.add_argument(
        "--mlflow",
        metavar="URI",
        type=outputs.mlflow_option("--mlflow"),
        default=None,
        help="at the end, export the run to MLflow (e.g. sqlite:///mlflow.db or "
        "http://127.0.0.1:5000; needs the mlflow extra)",
    )
    options.scale_out(p)
    p.set_defaults(func=cmd_all, parser=p)

    p = sub.add_parser("run", help="run one cell of a matrix by its id")
    p.add_argument("cell", help="cell id, e.g. synth-few/fine-tune/float32/s0")
    options.run_cells(p)
    p.add_argument(
        "--resume", action="store_true", help="complete a stopped run: skip the cell if done"
    )
    p.set_defaults(func=cmd_run, parser=p)

    p = sub.add_parser("list", help="list the cells of a matrix")
    options.profile(p)
    options.json(p, "the resolved matrix as JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("env", help="print the environment fingerprint (JSON)")
    p.add_argument("--backend", default=None)
    p.set_defaults(func=cmd_env)


def _executor(args: argparse.Namespace) -> tuple[Any, Any]:
    """The executor and shard the options ask for (InputError, one line, when bad)."""
    from harness.executors import from_options
    from harness.run.shard import parse_shard

    shard = parse_shard(args.shard) if getattr(args, "shard", None) is not None else None
    executor = from_options(
        getattr(args, "executor", None),
        jobs=getattr(args, "jobs", None),
        devices=getattr(args, "devices", None),
        scheduler=getattr(args, "scheduler", None),
    )
    from harness.run.preflight import check_devices

    check_devices(getattr(executor, "devices", None), getattr(args, "backend", None))
    return executor, shard


def execute(args: argparse.Namespace, matrix: Any, cells: Any, resume: bool) -> tuple[Path, int]:
    """Run ``cells`` of ``matrix`` as the options say; (run folder, 0 or 1 if a cell failed)."""
    return _run(args, matrix, cells, resume)


def _run(args: argparse.Namespace, matrix: Any, cells: Any, resume: bool) -> tuple[Path, int]:
    from harness.run.orchestrate import run_matrix

    executor, shard = _executor(args)
    try:
        outcome = run_matrix(
            matrix,
            cells=cells,
            resume=resume,
            run_id=args.run_id,
            runs_dir=args.runs_dir,
            backend=args.backend,
            dry_run=args.dry_run,
            allow_unpinned=args.allow_unpinned,
            skip_unavailable=args.skip_unavailable,
            executor=executor,
            shard=shard,
            recording=getattr(args, "recording", None),
        )
    except RunStopped as exc:  # a signal or a full disk: say how to resume
        raise RunStopped(
            f"{exc.message}; {_resume_hint(args, exc)}",
            run_id=exc.run_id,
            run_dir=exc.run_dir,
            exit_code=exc.exit_code,
        ) from exc
    n_ok = sum(1 for c in outcome.cells if c.status in ("ok", "resumed"))
    n_skip = sum(1 for c in outcome.cells if c.status == "skipped")
    print(
        f"run {outcome.run_id}: {n_ok} ok, {len(outcome.failed_cells)} failed, {n_skip} skipped "
        f"in {outcome.wall_seconds:.1f}s -> {outcome.run_dir}"
    )
    for cid in outcome.failed_cells:
        print(f"  failed: {cid}")
    return outcome.run_dir, EXIT_FAILURE if outcome.failed_cells else EXIT_OK


def _resume_hint(args: argparse.Namespace, stopped: RunStopped) -> str:
    """The exact command that completes a stopped run (or why there is none)."""
    from harness import runfolder

    if not runfolder.is_run(Path(stopped.run_dir)):
        return "nothing was recorded; start the run again"
    return f"resume with: {shlex.join(resume_command(args, stopped.run_id))}"


def resume_command(args: argparse.Namespace, run_id: str) -> list[str]:
    """The command line that completes run ``run_id``, which the command ``args`` started:
    the same command (``bench all``, or ``bench run CELL``) with every option it was given
    — those that select the cells (``--only``, ``--profile``, ``--backend``, ``--shard``,
    ``--runs-dir``, ...) and those that decide how they run and what happens at the end —
    plus ``--run-id`` and ``--resume``. Read off the command's own parser, so that an option
    added later is carried over too; the profile is named even when it came from
    ``$BENCH_PROFILE``."""
    parser: argparse.ArgumentParser = args.parser
    given: dict[str, list[str]] = {}
    positionals: list[str] = []
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.dest in ("help", "resume", "run_id") or value is None:
            continue
        if not action.option_strings:
            positionals.append(str(value))
        elif value != action.default:
            flag = max(action.option_strings, key=len)
            given[action.dest] = [flag] if action.nargs == 0 else [flag, str(value)]
    given.setdefault("profile", ["--profile", default_profile()])
    first = [*given.pop("profile"), *given.pop("only", [])]
    rest = [part for parts in given.values() for part in parts]
    command = args.command.split()  # "all", "run", or "baseline record"
    return ["bench", *command, *positionals, *first, "--run-id", run_id, *rest, "--resume"]


def cmd_all(args: argparse.Namespace) -> int:
    """Run the matrix, then the end-of-run pipeline (harness.run.pipeline): compare with the
    stored baseline, write the report, update the history index, export to MLflow if asked."""
    matrix = load_matrix(args.profile or default_profile())
    run_dir, code = _run(args, matrix, matrix.select(args.only), args.resume)
    if args.dry_run:
        return code
    from harness.run.pipeline import end_of_run

    end = end_of_run(
        run_dir,
        baseline_path=args.baseline,
        compare_and_report=not args.no_compare,
        mlflow_uri=args.mlflow,
    )
    return max(code, end)


def cmd_run(args: argparse.Namespace) -> int:
    matrix = load_matrix(args.profile or default_profile())
    return _run(args, matrix, (matrix.cell(args.cell),), resume=args.resume)[1]


def cmd_list(args: argparse.Namespace) -> int:
    matrix = load_matrix(args.profile or default_profile())
    if args.json:
        data = matrix.to_dict()
        data["cells"] = [{"cell_id": c.cell_id, **c.to_dict()} for c in matrix.cells]
        print(
            json.dumps({**data, "kind": LIST_KIND, "schema": LIST_SCHEMA}, indent=2, sort_keys=True)
        )
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

    fp = {**env.fingerprint(args.backend), "kind": ENV_KIND, "schema": ENV_SCHEMA}
    print(json.dumps(fp, indent=2, sort_keys=True))
    return EXIT_OK
