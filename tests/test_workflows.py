"""CI workflows install Python environments from uv.lock only, as scripts/bench and scripts/test do.

Reads every workflow under ``.github/workflows/`` (nothing there can run here: no GitHub
runner, no GPU), and runs the workflows' own host-environment step in a copy of the project:
the ``.venv`` it makes matches the lock (``uv sync --frozen --check``) and runs ``bench``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the dask and mlflow extras")

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))
# Ways to install Python packages that bypass uv.lock.
UNLOCKED = re.compile(
    r"\bpip3?\s+install\b|-m\s+pip\s+install\b|\buv\s+pip\s+install\b"
    r"|\bpython3?\s+-m\s+venv\b|\bvirtualenv\b|\bsetup\.py\s+(install|develop)\b"
)
SYNCS = re.compile(r"\bensure_env\b|\bscripts/(bench|test)\b|\buv\s+sync\s+--frozen\b")


def _steps() -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    for path in WORKFLOWS:
        for job, spec in (yaml.safe_load(path.read_text()).get("jobs") or {}).items():
            yield path.name, job, spec.get("steps") or []


def test_there_are_workflows_to_check() -> None:
    assert [p.name for p in WORKFLOWS] == ["nightly-gpu.yml"]


def test_no_workflow_installs_outside_the_lock() -> None:
    """Issue 16: the nightly job made its host environment with `pip install -e .`."""
    offenders = [
        f"{name}: {job} / {step.get('name')}: {line.strip()}"
        for name, job, steps in _steps()
        for step in steps
        for line in str(step.get("run", "")).splitlines()
        if UNLOCKED.search(line)
    ]
    assert offenders == []


def test_host_bench_runs_from_the_locked_env() -> None:
    """Every step that runs bench on the host (not in the container) uses the checkout's
    .venv, after a step of the same job synced it with the lock."""
    checked = 0
    for name, job, steps in _steps():
        synced = False
        for step in steps:
            run = str(step.get("run", ""))
            synced = synced or bool(SYNCS.search(run))
            for bench in re.findall(r"[^\s\"'=]*bin/bench\b", run):
                assert bench == ".venv/bin/bench", f"{name}: {job}: {bench}"
                assert synced, f"{name}: {job} / {step.get('name')}: .venv not synced before"
                checked += 1
    assert checked >= 2  # the data step and the merge step


def test_the_host_environment_step_builds_the_locked_env(tmp_path: Path) -> None:
    runs = {
        str(step["run"]).strip()
        for _, _, steps in _steps()
        for step in steps
        if "ensure_env" in str(step.get("run", ""))
    }
    assert len(runs) == 1, runs  # one way, everywhere
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy2(REPO / name, project / name)
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("scripts", "harness"):
        shutil.copytree(REPO / name, project / name, ignore=ignore)
    (project / "data").mkdir()
    shutil.copy2(REPO / "data" / "manifest.json", project / "data" / "manifest.json")
    tools = REPO / ".venv-tools"
    if tools.is_dir():  # reuse the installed uv rather than installing it again
        (project / ".venv-tools").symlink_to(tools)

    step = subprocess.run(
        ["bash", "-c", runs.pop()], cwd=project, capture_output=True, text=True, timeout=600
    )
    assert step.returncode == 0, step.stderr[-2000:]
    check = subprocess.run(
        [str(project / "scripts" / "uv"), "sync", "--frozen", "--check"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    listed = subprocess.run(
        [str(project / ".venv" / "bin" / "bench"), "data", "list"],
        cwd=project,
        env={**os.environ, "BENCH_HOME": str(project)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "chest-xray" in listed.stdout
    assert not list((project / ".venv" / "lib").glob("python3*/site-packages/tensorflow"))
