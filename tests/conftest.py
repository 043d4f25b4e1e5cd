"""Shared fixtures (owned by the runner): the CLI as a subprocess, and one smoke run per session.

``smoke_run_dir`` runs the whole smoke matrix ONCE per test session through the real CLI
(``bench all --profile smoke``) into a temporary runs folder, with the prepared caches in a
temporary data folder (the repository's ``data/`` and ``reports/`` are never touched), and
returns the run folder. Every test that needs real smoke results reuses it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = [sys.executable, "-m", "harness.cli"]


@pytest.fixture(scope="session")
def bench_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide BENCH_DATA_DIR: synthetic datasets are generated into it once."""
    return tmp_path_factory.mktemp("bench-data")


@pytest.fixture(scope="session")
def bench_env(bench_data_dir: Path) -> dict[str, str]:
    """Environment for ``bench`` subprocesses: repo as BENCH_HOME, temporary data folder."""
    env = dict(os.environ)
    env.update(
        BENCH_HOME=str(REPO),
        BENCH_DATA_DIR=str(bench_data_dir),
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env.pop("BENCH_PROFILE", None)
    return env


@pytest.fixture(scope="session")
def run_bench(bench_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``bench ARGS...`` as a subprocess (the real CLI) and return the completed process."""

    def run(*args: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*BENCH, *args],
            cwd=REPO,
            env={**bench_env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def smoke_run_dir(
    tmp_path_factory: pytest.TempPathFactory,
    run_bench: Callable[..., subprocess.CompletedProcess[str]],
) -> Path:
    """The run folder of one full ``bench all --profile smoke`` (run once per session)."""
    runs = tmp_path_factory.mktemp("smoke-runs")
    proc = run_bench("all", "--profile", "smoke", "--runs-dir", str(runs), "--run-id", "smoke")
    run_dir = runs / "smoke"
    if not (run_dir / "run.json").is_file():
        pytest.fail(
            f"bench all --profile smoke produced no run (exit {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    # Cells that failed are left for the tests to report, with their recorded errors.
    return run_dir
