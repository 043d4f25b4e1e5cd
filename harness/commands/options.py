"""The options several commands share, declared once (as asv's ``common_args``).

A command adds an option by calling one of these on its parser, so that ``--profile``,
``--only``, the ``RUN`` argument, ``--baseline``, ``--json``, ``--runs-dir``, ``--db`` and
the scale-out options mean, parse and default the same everywhere; ``help`` overrides
the wording where a command gives an option a narrower sense (``bench history
--profile``: a filter, not a matrix). Nothing heavy is imported here: every command
module imports this one when ``bench --help`` builds the parser.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import outputs

PROFILE_HELP = "matrix name in benchmarks/ (or a .toml path); default $BENCH_PROFILE or smoke"
ONLY_HELP = "cell-id glob(s) or substring(s), comma-separated"
BASELINE_HELP = (
    "baseline file or run folder (default: the stored baseline of the run's key, else "
    "another of its profile's)"
)
DB_HELP = (
    "index file (default: <runs-dir>/.history.sqlite); an existing file that is not an "
    "index of this harness is refused, never replaced"
)


def profile(p: argparse.ArgumentParser, help: str = PROFILE_HELP, **kw: str) -> None:
    """``--profile NAME``: which matrix (default None: ``$BENCH_PROFILE`` or smoke)."""
    p.add_argument("--profile", default=None, help=help, **kw)


def only(p: argparse.ArgumentParser) -> None:
    """``--only PATTERNS``: the cells of the matrix to run."""
    p.add_argument("--only", default=None, help=ONLY_HELP)


def run(p: argparse.ArgumentParser) -> None:
    """The ``RUN`` argument: a run id under reports/runs/ or a run folder
    (:func:`harness.runfolder.resolve`)."""
    p.add_argument("run", metavar="RUN", help="run id under reports/runs/, or a run folder")


def baseline(p: argparse.ArgumentParser, help: str = BASELINE_HELP, **kw: str) -> None:
    """``--baseline FILE``: a baseline file or a run folder to compare with."""
    p.add_argument("--baseline", type=Path, default=None, help=help, **kw)


def json(p: argparse.ArgumentParser, help: str) -> None:
    """``--json``: machine-readable output (what it holds is the command's ``help``)."""
    p.add_argument("--json", action="store_true", help=help)


def runs_dir(p: argparse.ArgumentParser) -> None:
    """``--runs-dir DIR``: where run folders are (default reports/runs)."""
    p.add_argument("--runs-dir", type=Path, default=None, help="default: reports/runs")


def history_db(p: argparse.ArgumentParser) -> None:
    """``--db FILE``: the history index (a file that is not one is refused as it is read)."""
    p.add_argument(
        "--db", type=outputs.option(outputs.HISTORY_INDEX, "--db"), default=None, help=DB_HELP
    )


def run_cells(p: argparse.ArgumentParser) -> None:
    """The options of every command that runs cells (bench all / run / baseline record)."""
    profile(p)
    p.add_argument("--run-id", default=None, help="run folder name (default: UTC time-profile)")
    runs_dir(p)
    p.add_argument("--backend", default=None, help="Keras backend: tensorflow, jax or torch")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="build every model at full size, run a couple of steps on random stand-ins",
    )
    p.add_argument("--allow-unpinned", action="store_true", help="accept unpinned inputs")
    p.add_argument(
        "--skip-unavailable",
        action="store_true",
        help="record cells whose backend, precision or data is not available here as "
        "skipped (with the reason) instead of stopping before the run (exit 2)",
    )


def scale_out(p: argparse.ArgumentParser) -> None:
    """Where the cells run (:mod:`harness.executors`; docs/scale-out.md)."""
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="run N cells at once on this machine, the CPU cores divided between them "
        "(their throughput is marked as measured under sharing)",
    )
    p.add_argument(
        "--devices",
        default=None,
        metavar="LIST",
        help="one cell per GPU at a time, pinned with CUDA_VISIBLE_DEVICES: 0,1,2,3 or 'all'",
    )
    p.add_argument(
        "--executor",
        default=None,
        choices=("serial", "local", "dask"),
        help="where cells run (default: serial, or what --jobs/--devices/--scheduler imply)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="tcp://HOST:PORT",
        help="the dask.distributed scheduler of an existing cluster (--executor dask)",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="run a stable 1/N of the cells (shard I of N); combine runs with `bench merge`",
    )
