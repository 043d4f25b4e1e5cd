"""``bench export mlflow RUN [--tracking-uri URI] [--experiment NAME]``: a run into MLflow.

``--uri`` is the same option. A local folder (``./mlruns``, ``file:///…/mlruns``) is stored
as current MLflow keeps local runs: ``sqlite:///<folder>/mlflow.db``
(:func:`harness.exporters.mlflow.resolve_tracking_uri`).
"""

from __future__ import annotations

import argparse
import os

from harness import outputs, runfolder
from harness.commands import options
from harness.errors import EXIT_OK, InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run to another tool (MLflow)")
    targets = p.add_subparsers(dest="target", metavar="TARGET")
    targets.required = True
    m = targets.add_parser(
        "mlflow",
        help="one MLflow run per cell, in one experiment per profile",
        description=(
            "Log every cell of RUN as an MLflow run (params: the resolved config; metrics: "
            "per-epoch history with steps, throughput, memory, time; tags: run and cell ids, "
            "status, the environment fingerprint; artifacts: the cell and run JSON, the "
            "report, the TensorBoard events). Exporting the same run again updates its MLflow "
            "runs (found by their bench.run_id and bench.cell_id tags) instead of adding more. "
            "Needs the mlflow extra."
        ),
    )
    options.run(m)
    m.add_argument(
        "--tracking-uri",
        "--uri",
        dest="tracking_uri",
        type=outputs.mlflow_option("--tracking-uri"),
        default=None,
        help="a folder or file:// URI (runs go to <folder>/mlflow.db, SQLite, as current "
        "MLflow keeps local runs), sqlite:///mlflow.db, or a server such as "
        "http://127.0.0.1:5000 (default: $MLFLOW_TRACKING_URI); a local file or folder that "
        "is not an MLflow store is refused",
    )
    m.add_argument(
        "--experiment", default=None, help="experiment name (default: transfer-bench-<profile>)"
    )
    m.set_defaults(func=run_mlflow)


def run_mlflow(args: argparse.Namespace) -> int:
    from harness.exporters import mlflow as mlflow_export

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise InputError(
            "bench export mlflow: no tracking URI; pass --tracking-uri URI (e.g. ./mlruns, "
            "sqlite:///mlflow.db or http://127.0.0.1:5000) or set MLFLOW_TRACKING_URI"
        )
    if not args.tracking_uri:
        outputs.check_mlflow_uri(uri, option="MLFLOW_TRACKING_URI=")
    run_dir = runfolder.resolve(args.run)
    print(mlflow_export.export_run(run_dir, tracking_uri=uri, experiment=args.experiment).summary())
    return EXIT_OK
