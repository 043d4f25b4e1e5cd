"""Run folders are ours, cell files are their cell's, and the resume command resumes the
same run (issue 18).

The real CLI in subprocesses with real signals and real run folders (dry runs of the smoke
matrix: no data, a couple of steps per cell).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import runkit
from conftest import BENCH, REPO

from harness import results, runfolder
from harness.cli import build_parser
from harness.commands import run as run_command
from harness.errors import InputError

CELL = "synth-few/scratch/float32/s0"
CELL2 = "synth-few/full-fine-tune/float32/s0"


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


class Bench:
    """``bench ARGS`` as a real process, SIGINT not ignored (as from a terminal)."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [*BENCH, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        self.out: list[str] = []

    def wait_for(self, text: str, timeout: float = 300) -> bool:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(line)
            if text in line:
                return True
            if time.monotonic() > deadline:
                break
        return False

    def stop(self, sig: int) -> tuple[int, str]:
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=120)
        self.out.append(out)
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def bench(bench_env: dict[str, str]) -> Iterator:
    started: list[Bench] = []

    def start(*args: str) -> Bench:
        started.append(Bench(bench_env, *args))
        return started[-1]

    yield start
    for b in started:
        b.kill()


def dry(runs: Path, run_id: str, only: str = CELL) -> list[str]:
    return [
        "all", "--profile", "smoke", "--only", only, "--dry-run", "--no-compare",
        "--runs-dir", str(runs), "--run-id", run_id,
    ]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def same_command(argv: list[str], resumed: list[str]) -> None:
    """``resumed`` (a printed resume command) parses to ``argv``'s command and options,
    with ``--resume`` and a ``--run-id``."""
    parser = build_parser()
    a, b = parser.parse_args(argv), parser.parse_args(resumed)
    ignore = {"resume", "run_id", "func", "parser", "profile"}
    mine = {k: v for k, v in vars(a).items() if k not in ignore}
    theirs = {k: v for k, v in vars(b).items() if k not in ignore}
    assert theirs == mine and b.resume and b.run_id
    assert b.profile == (a.profile or "smoke")


# --- run folders -------------------------------------------------------------------------


def test_a_run_id_naming_a_folder_that_is_not_a_run_is_refused(run_bench, tmp_path: Path):
    """``--runs-dir reports --run-id baselines`` would write a run into the baselines."""
    reports = tmp_path / "reports"
    (reports / "baselines").mkdir(parents=True)
    shutil.copy(
        REPO / "tests" / "recorded" / "baseline-schema1-smoke.json",
        reports / "baselines" / "smoke.json",
    )
    before = snapshot(reports)
    proc = run_bench(*dry(reports, "baselines"), timeout=300)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    line = one_line(proc.stderr)
    assert "--run-id 'baselines'" in line and "choose another --run-id" in line, line
    assert snapshot(reports) == before and not (reports / "baselines" / ".lock").exists()


@pytest.mark.parametrize("name", ["baselines", "perf", "cells"])
def test_a_reserved_run_id_is_refused_even_where_nothing_is_yet(run_bench, tmp_path, name):
    reports = tmp_path / "reports"
    proc = run_bench(*dry(reports, name), timeout=300)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert f"--run-id {name!r}: bench names its own folders so" in one_line(proc.stderr)
    assert not reports.exists()


def test_a_folder_with_our_lock_only_or_run_json_is_a_run_folder(tmp_path: Path) -> None:
    """A run that never started leaves only its lock; a run folder has run.json."""
    started = tmp_path / "started"
    started.mkdir()
    (started / ".lock").write_text("123 bench all\n")
    runfolder.check_ours(started)  # accepted
    run_dir = runkit.write_run(tmp_path, [runkit.cell()], run_id="r")
    runfolder.check_ours(run_dir)
    (started / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"holds 'notes\.txt'"):
        runfolder.check_ours(started)


def test_a_cell_file_copied_under_another_cells_name_is_run_again(bench, tmp_path: Path):
    runs = tmp_path / "runs"
    first = bench(*dry(runs, "copied", only=f"{CELL},{CELL2}"))
    assert first.wait_for(f"{CELL}: starting")
    assert first.stop(signal.SIGTERM)[0] == 143
    # CELL's (valid, ok) result, and a copy of it under CELL2's file name.
    cells = runs / "copied" / "cells"
    cells.mkdir(exist_ok=True)
    doc = {**results.to_dict(runkit.cell("synth-few", "scratch")), "kind": results.CELL_KIND}
    text = json.dumps({**doc, "schema": results.CELL_SCHEMA})
    (cells / runfolder.cell_filename(CELL)).write_text(text)
    (cells / runfolder.cell_filename(CELL2)).write_text(text)
    with pytest.raises(InputError, match="holds the result of cell 'synth-few/scratch/"):
        runfolder.read_cells(runs / "copied")  # compare, report and history refuse it too
    resumed = bench(*dry(runs, "copied", only=f"{CELL},{CELL2}"), "--resume")
    assert resumed.wait_for(f"{CELL2}: starting"), "".join(resumed.out)  # not "already done"
    assert f"{CELL}: already done" in "".join(resumed.out)
    assert resumed.stop(signal.SIGTERM)[0] == 143


# --- the resume command ------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["run", CELL, "--dry-run"],
        ["all", "--only", CELL, "--dry-run", "--no-compare", "--mlflow", "sqlite:///{tmp}/m.db"],
    ],
    ids=["bench-run", "all-only-mlflow"],
)
def test_the_printed_resume_command_resumes_the_same_run(bench, tmp_path: Path, argv):
    runs = tmp_path / "runs"
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--runs-dir", str(runs), "--run-id", "r"]
    run = bench(*argv)
    assert run.wait_for(f"[1/1] {CELL}: starting")
    code, err = run.stop(signal.SIGINT)
    assert code == 130, err
    resume = shlex.split(one_line(err).split("resume with: ", 1)[1])
    assert resume[0] == "bench"
    same_command(argv, resume[1:])
    resumed = bench(*resume[1:])
    assert resumed.wait_for(f"[1/1] {CELL}: starting"), "".join(resumed.out)  # one cell
    assert resumed.stop(signal.SIGTERM)[0] == 143


@pytest.mark.parametrize(
    "argv",
    [
        ["all"],
        ["all", "--only", "fine-tune, scratch", "--profile", "smoke", "--runs-dir", "r x"],
        ["all", "--backend", "jax", "--shard", "1/2", "--jobs", "2", "--skip-unavailable"],
        ["all", "--executor", "dask", "--scheduler", "tcp://127.0.0.1:8786", "--baseline", "b"],
        ["all", "--allow-unpinned", "--mlflow", "http://127.0.0.1:5000", "--devices", "all"],
        ["run", CELL, "--backend", "tensorflow", "--runs-dir", "runs"],
    ],
)
def test_the_resume_command_carries_every_option(argv: list[str]) -> None:
    args = build_parser().parse_args([*argv, "--run-id", "first"])
    cmd = run_command.resume_command(args, "stopped")
    assert cmd[:2] == ["bench", argv[0]] and cmd[-1] == "--resume"
    same_command([*argv, "--run-id", "first"], cmd[1:])
    assert build_parser().parse_args(cmd[1:]).run_id == "stopped"
    assert isinstance(args.parser, argparse.ArgumentParser)
