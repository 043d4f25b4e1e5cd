"""The lock: uv.lock matches pyproject.toml, and a stale lock fails with one line naming the fix.

Runs the project's own ``scripts/lock --check`` (the pinned uv) on a copy of the project
files, so the repository is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """pyproject.toml, uv.lock and scripts/ in a temporary folder, sharing the pinned uv."""
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy2(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "__init__.py").write_text("")
    tools = REPO / ".venv-tools"
    if tools.is_dir():  # reuse the installed uv rather than installing it again
        (tmp_path / ".venv-tools").symlink_to(tools)
    return tmp_path


def _check(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(folder / "scripts" / "lock"), "--check"],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_committed_lock_matches_pyproject(project_copy: Path) -> None:
    proc = _check(project_copy)
    assert proc.returncode == 0, proc.stderr
    assert "uv.lock matches pyproject.toml" in proc.stdout


def test_a_stale_lock_fails_with_one_line_naming_the_command(project_copy: Path) -> None:
    pyproject = project_copy / "pyproject.toml"
    text = pyproject.read_text()
    assert '  "tabulate>=0.9",\n' in text
    pyproject.write_text(text.replace('  "tabulate>=0.9",\n', '  "tabulate>=0.9",\n  "six",\n'))
    lock_before = (project_copy / "uv.lock").read_bytes()
    proc = _check(project_copy)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "uv.lock is stale" in lines[0] and "run scripts/lock" in lines[0]
    assert (project_copy / "uv.lock").read_bytes() == lock_before  # --check never rewrites
