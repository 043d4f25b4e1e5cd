"""Every fault a clean error, nothing lost (issue 13): one test per numbered item.

Each test throws one fault at the real CLI (in-process through ``harness.cli.main`` where
that is enough, else as a subprocess with real signals, real run folders and tmpfs mounts)
and checks the contract: one line naming the file/field/value and what to do, a known exit
code (1 regression or failed cell, 2 bad input, 3 internal error, 130/143 signals, 141 a
closed stdout), nothing half-written and nothing lost. Item 7 (unknown names, unsupported
precisions) is the data layer's pre-flight and is tested there (tests/test_preflight*.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import runkit
from conftest import BENCH, REPO

from harness import results, runfolder
from harness.analysis import baseline, plots
from harness.cli import main
from harness.matrix import load_matrix

CELL = "synth-few/scratch/float32/s0"  # needs no pretrained weights; a dry run needs no data
CELL2 = "synth-few/full-fine-tune/float32/s0"


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """BENCH_HOME for in-process runs: a temporary folder with this checkout's matrices."""
    (tmp_path / "benchmarks").symlink_to(REPO / "benchmarks")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").symlink_to(REPO / "data" / "manifest.json")
    monkeypatch.setenv("BENCH_HOME", str(tmp_path))
    monkeypatch.delenv("BENCH_DEBUG", raising=False)
    return tmp_path


def one_line(err: str) -> str:
    """The single line a fault must print (and nothing else: no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to show nothing changed)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def no_temporary_files(folder: Path) -> None:
    left = [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert not left, f"half-written files left: {left}"


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs of its own at ``path`` (skipped where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path, keep_free: int = 0) -> None:
    """Fill the file system of ``folder`` until at most ``keep_free`` bytes are free."""
    with open(folder / "filler", "wb") as fh, contextlib.suppress(OSError):
        while os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize > keep_free:
            fh.write(b"\0" * 4096)
            fh.flush()


class Bench:
    """``bench ARGS`` as a real process (its own session, SIGINT not ignored)."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [*BENCH, *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.out: list[str] = []

    def wait_for(self, text: str, timeout: float = 300) -> bool:
        """Read stdout until a line holds ``text`` (True) or the process ends (False)."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(line)
            if text in line:
                return True
            if time.monotonic() > deadline:
                break
        return False

    def children(self, timeout: float = 60) -> list[int]:
        """The pids of its child processes, once it has some (the cell's process)."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            pids = [int(p) for p in path.read_text().split()] if path.exists() else []
            if pids:
                return pids
            time.sleep(0.1)
        return []

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.out) + out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def bench(bench_env: dict[str, str]) -> Iterator[Callable[..., Bench]]:
    started: list[Bench] = []

    def start(*args: str) -> Bench:
        b = Bench(bench_env, *args)
        started.append(b)
        return b

    yield start
    for b in started:
        b.kill()


def dry_args(runs: Path, run_id: str, only: str = CELL) -> list[str]:
    return [
        "all", "--profile", "smoke", "--only", only, "--dry-run", "--no-compare",
        "--runs-dir", str(runs), "--run-id", run_id,
    ]  # fmt: skip


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --- 1. a run where no cell succeeded still gets its report ------------------------------


def test_1_report_renders_when_every_cell_failed_or_was_skipped(home, capsys):
    cells = [
        runkit.cell("synth-few", "scratch", status="failed", error="RuntimeError: boom"),
        runkit.cell("synth-xray", "fine-tune", status="skipped", error="precision unsupported"),
    ]
    run_dir = runkit.write_run(home, cells, run_id="nothing-ok")
    assert main(["report", "nothing-ok"]) == 0
    assert capsys.readouterr().err == ""
    text = (run_dir / "report" / "report.md").read_text()
    assert "RuntimeError: boom" in text
    assert (run_dir / "report" / "plots" / "throughput.png").stat().st_size > 0
    # the plot on its own, with nothing at all
    assert plots.throughput_bars([], home / "empty.png").stat().st_size > 0


# --- 2. file-system errors: one line, exit 2, nothing half-written ----------------------


def test_2_paths_under_a_regular_file_are_one_line(home, capsys):
    runkit.write_run(home, runkit.standard_cells(), run_id="r1")
    afile = home / "a-file"
    afile.write_text("not a folder\n")
    for args in (
        ["baseline", "accept", "r1", "--output", str(afile / "b.json")],
        ["report", "r1", "--out", str(afile / "report")],
        [*dry_args(afile / "runs", "x")],
    ):
        assert main(args) == 2, args
        line = one_line(capsys.readouterr().err)
        assert str(afile) in line and "not a folder" in line, line


def test_2_read_only_and_full_file_systems_are_one_line(home, tmp_path, capsys):
    runkit.write_run(home, runkit.standard_cells(), run_id="r1")
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        assert main(["baseline", "accept", "r1", "--output", str(ro / "b.json")]) == 2
        line = one_line(capsys.readouterr().err)
        assert f"{ro}/b.json: cannot write: read-only file system" in line
    with tmpfs(tmp_path / "full", "size=16k") as full:
        earlier = full / "smoke.json"
        earlier.write_text('{"kind": "transfer-bench.baseline", "schema": 2}\n')  # ours
        fill(full)
        before = snapshot(full)
        assert main(["baseline", "accept", "r1", "--output", str(earlier)]) == 2
        line = one_line(capsys.readouterr().err)
        assert f"{earlier}: cannot write: no space left on the device" in line
        assert snapshot(full) == before  # the old baseline as it was, no temporary file


def test_2_run_folder_on_a_full_disk_stops_with_one_line(bench_env, tmp_path, run_bench):
    """Not even run.json fits: exit 2, one line, nothing half-written, nothing to resume."""
    with tmpfs(tmp_path / "runs", "size=4k") as runs:
        proc = run_bench(*dry_args(runs, "full"))
        assert proc.returncode == 2, proc.stderr
        line = one_line(proc.stderr)
        assert "run.json: cannot write: no space left on the device" in line
        assert "nothing was recorded; start the run again" in line
        no_temporary_files(runs)


@pytest.mark.slow
def test_2_full_disk_while_cell_results_are_written(bench_env, tmp_path, run_bench):
    """cells/ on a 4 KiB tmpfs: a dry-run result (~5 KiB) does not fit, its failure record
    (~2 KiB) does, so the first cell is recorded as failed with the reason; then nothing
    fits any more and the run stops with one line, exit 2, the first record unchanged."""
    runs = tmp_path / "runs"
    cells = runs / "disk" / "cells"
    with tmpfs(cells, "size=4k"):
        proc = run_bench(*dry_args(runs, "disk", only=f"{CELL},{CELL2}"))
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
        line = one_line(proc.stderr)
        assert "cannot write: no space left on the device" in line, line
        assert "run disk stopped (earlier results are unchanged); resume with: bench all" in line
        assert "--run-id disk" in line and line.endswith("--dry-run --no-compare --resume")
        recorded = runfolder.read_cells(runs / "disk")
        assert [(c.cell_id, c.status) for c in recorded] == [(CELL, "failed")]
        assert "No space left on device" in recorded[0].error or "no space left" in (
            recorded[0].error
        ), recorded[0].error
        no_temporary_files(runs)
        info = runfolder.read_run(runs / "disk")  # still readable: never half-written
        assert info.finished_at is None and set(info.cell_ids) == {CELL, CELL2}


# --- 3. files that are not UTF-8 -------------------------------------------------------


def test_3_non_utf8_matrix_and_baseline_are_one_line(home, tmp_path, capsys):
    matrix = tmp_path / "latin1.toml"
    matrix.write_bytes('[profile]\ndescription = "café"\n'.encode("latin-1"))
    assert main(["list", "--profile", str(matrix)]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{matrix}: not UTF-8 text (byte 0xe9 at offset 28); save it as UTF-8" in line

    run_dir = runkit.write_run(home, runkit.standard_cells(), run_id="r1")
    path, _ = baseline.accept(run_dir, path=tmp_path / "base.json")
    path.write_bytes(path.read_bytes().replace(b'"smoke"', '"smöke"'.encode("latin-1")))
    assert main(["compare", "r1", "--baseline", str(path)]) == 2
    assert f"{path}: not UTF-8 text" in one_line(capsys.readouterr().err)


# --- 4. values inside result and baseline JSON are checked -----------------------------


def _baseline_with(home: Path, tmp_path: Path, **cell0: object) -> Path:
    run_dir = runkit.write_run(home, runkit.standard_cells(), run_id="r1")
    path, _ = baseline.accept(run_dir, path=tmp_path / "base.json")
    raw = json.loads(path.read_text())
    for c in raw["cells"]:
        c.update(cell0)
    path.write_text(json.dumps(raw))  # json.dumps writes NaN as NaN, like a careless tool
    return path


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_4_nan_baseline_is_refused_not_within_noise(home, tmp_path, capsys, json_flag):
    path = _baseline_with(home, tmp_path, best_val_accuracy=float("nan"))
    assert main(["compare", "r1", "--baseline", str(path), *json_flag]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{path}: not valid JSON (NaN is not a JSON number)" in one_line(captured.err)


@pytest.mark.parametrize(
    ("value", "says"),
    [("0.9", "expected a number, got '0.9'"), (5.0, "expected a number in [0, 1], got 5.0")],
)
def test_4_wrong_baseline_values_are_refused_naming_the_field(home, tmp_path, capsys, value, says):
    path = _baseline_with(home, tmp_path, best_val_accuracy=value)
    for args in (["compare", "r1"], ["compare", "r1", "--json"], ["report", "r1"]):
        assert main([*args, "--baseline", str(path)]) == 2
        line = one_line(capsys.readouterr().err)
        assert f"{path}: cells[0].best_val_accuracy: {says}" in line, line


def test_4_wrong_cell_values_are_refused_by_compare_and_report(home, capsys):
    run_dir = runkit.write_run(home, runkit.standard_cells(), run_id="r1")
    baseline.accept(run_dir)
    bad = run_dir / "cells" / runfolder.cell_filename("synth-few/fine-tune/float32/s0")
    raw = json.loads(bad.read_text())
    raw["train_throughput"]["images_per_s"] = "fast"
    bad.write_text(json.dumps(raw))
    for args in (["compare", "r1"], ["compare", "r1", "--json"], ["report", "r1"]):
        assert main(args) == 2, args
        line = one_line(capsys.readouterr().err)
        assert f"{bad}: cell.train_throughput.images_per_s: expected a number, got 'fast'" in line


def test_4_a_cell_that_does_not_validate_is_run_again_on_resume(bench, tmp_path):
    runs = tmp_path / "runs"
    first = bench(*dry_args(runs, "again"))
    assert first.wait_for("starting"), first.finish()
    first.proc.send_signal(signal.SIGTERM)
    assert first.finish()[0] == 143
    # A result file that parses as JSON but holds a string where a number belongs.
    cell = results.to_dict(runkit.cell("synth-few", "scratch"))
    cell["best_val_accuracy"] = "0.2"
    path = runs / "again" / "cells" / runfolder.cell_filename(CELL)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**cell, "kind": results.CELL_KIND, "schema": results.CELL_SCHEMA}))
    resumed = bench(*dry_args(runs, "again"), "--resume")
    assert resumed.wait_for(f"{CELL}: starting"), resumed.finish()  # not "already done"
    resumed.proc.send_signal(signal.SIGTERM)
    assert resumed.finish()[0] == 143


# --- 5. one writer per run folder --------------------------------------------------------


def test_5_second_writer_on_the_same_run_id_is_refused(bench, tmp_path):
    runs = tmp_path / "runs"
    first = bench(*dry_args(runs, "shared"))
    assert first.wait_for("starting"), first.finish()
    second = bench(*dry_args(runs, "shared"), "--resume")
    started = second.wait_for("starting", timeout=120)
    code, _, err = second.finish()
    assert not started and code == 2, err
    line = one_line(err)
    assert f"run folder {runs / 'shared'} is in use by pid {first.proc.pid}" in line
    assert "choose another --run-id" in line
    # A stale lock (its holder killed outright) blocks nobody: the kernel released it.
    first.proc.kill()
    first.finish()
    assert (runs / "shared" / ".lock").is_file()
    third = bench(*dry_args(runs, "shared"), "--resume")
    assert third.wait_for(f"{CELL}: starting"), third.finish()
    third.proc.send_signal(signal.SIGTERM)
    assert third.finish()[0] == 143


# --- 6. baseline accept refuses dry runs and partial runs --------------------------------


def _smoke_run(home: Path, run_id: str, *, dry_run: bool, chosen: int) -> Path:
    """A run folder of the real smoke matrix with the first ``chosen`` cells ok."""
    matrix = load_matrix("smoke")
    cells = [
        dataclasses.replace(
            runkit.cell(c.dataset, c.strategy_label, precision=c.precision, seed=c.seed),
            cell_id=c.cell_id,
        )
        for c in matrix.cells[:chosen]
    ]
    run_dir = runkit.write_run(home, cells, run_id=run_id)
    info = runfolder.read_run(run_dir)
    runfolder.write_run(
        run_dir, dataclasses.replace(info, matrix={**matrix.to_dict(), "dry_run": dry_run})
    )
    return run_dir


def test_6_baseline_accept_refuses_a_dry_run_even_forced(home, capsys):
    n = len(load_matrix("smoke").cells)
    _smoke_run(home, "dry", dry_run=True, chosen=n)
    for force in ([], ["--force"]):
        assert main(["baseline", "accept", "dry", *force]) == 2
        line = one_line(capsys.readouterr().err)
        assert "run 'dry' is a dry run" in line and "cannot be a baseline" in line
    assert not (home / "reports" / "baselines").exists()


def test_6_baseline_accept_refuses_an_only_subset_unless_forced(home, capsys):
    n = len(load_matrix("smoke").cells)
    _smoke_run(home, "subset", dry_run=False, chosen=2)
    assert main(["baseline", "accept", "subset"]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"run 'subset' ran 2 of the {n} cells of profile 'smoke' (an --only subset" in line
    assert "--force" in line
    assert not (home / "reports" / "baselines").exists()
    assert main(["baseline", "accept", "subset", "--force"]) == 0
    (stored,) = baseline.stored("smoke")
    assert baseline.load(stored).forced
    _smoke_run(home, "whole", dry_run=False, chosen=n)
    assert main(["baseline", "accept", "whole", "--output", str(home / "whole.json")]) == 0


# --- 8. interrupts and small inputs ------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "code", "name"),
    [(signal.SIGINT, 130, "interrupted (SIGINT)"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
)
def test_8_signals_stop_the_cell_and_print_the_resume_command(
    bench, bench_env, tmp_path, sig, code, name
):
    runs = tmp_path / "runs"
    run = bench(*dry_args(runs, "sig"))
    assert run.wait_for(f"{CELL}: starting"), run.finish()
    children = run.children()
    assert children, "the cell's process should be running"
    run.proc.send_signal(sig)
    rc, _, err = run.finish()
    assert rc == code, err
    line = one_line(err)
    assert line.startswith(f"bench: {name}: run sig stopped;"), line
    command = line.split("resume with: ", 1)[1]
    assert command == (
        f"bench all --profile smoke --only {CELL} --run-id sig --runs-dir {runs} "
        "--dry-run --no-compare --resume"
    )
    # The cell ends with the run: stopped by it, or, when the signal came while the cell's
    # process was still being spawned, by PR_SET_PDEATHSIG as the run exits (asynchronous:
    # a few milliseconds on a busy machine, hence the short wait).
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in children), "the cell's process outlived the run"
    assert list((runs / "sig" / "cells").glob("*")) == []  # the stopped cell: not recorded
    no_temporary_files(runs)
    assert runfolder.read_run(runs / "sig").finished_at is None
    # The printed command is the one that completes the run.
    resumed = bench(*shlex.split(command)[1:])
    assert resumed.wait_for(f"{CELL}: starting"), resumed.finish()
    resumed.proc.send_signal(signal.SIGTERM)
    assert resumed.finish()[0] == 143


@pytest.mark.parametrize("run_id", ["x\n", "x\ny", "../x", ".x"])
def test_8_run_id_must_be_the_whole_pattern(home, tmp_path, capsys, run_id):
    code = main([*dry_args(tmp_path / "runs", run_id)])
    assert code == 2
    line = one_line(capsys.readouterr().err)
    assert "use letters, digits" in line or "no cell pattern" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("only", ["", " ", ",", " , ,"])
def test_8_empty_only_is_refused(home, tmp_path, capsys, only):
    assert main([*dry_args(tmp_path / "runs", "r", only=only)]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"--only {only!r}: no cell pattern in it" in line
    assert not (tmp_path / "runs").exists()


# --- 9. a crash is not a regression ----------------------------------------------------


def test_9_internal_error_exits_3_with_one_line(home, capsys, monkeypatch):
    from harness.commands import compare as compare_cmd

    def broken(args):  # a bug somewhere below the command
        return {}["no such key"]

    runkit.write_run(home, runkit.standard_cells(), run_id="r1")
    monkeypatch.setattr(compare_cmd, "run", broken)
    assert main(["compare", "r1"]) == 3
    line = one_line(capsys.readouterr().err)
    assert line.startswith("bench: internal error: KeyError: 'no such key';")
    assert "rerun with --debug" in line
    with pytest.raises(KeyError):
        main(["--debug", "compare", "r1"])


def test_9_unguarded_file_error_on_a_path_is_bad_input_not_a_crash(home, capsys, monkeypatch):
    from harness.commands import compare as compare_cmd

    def denied(args):
        raise PermissionError(13, "Permission denied", "/srv/results/x.json")

    monkeypatch.setattr(compare_cmd, "run", denied)
    assert main(["compare", "r1"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line == (
        "bench: error: /srv/results/x.json: cannot access: permission denied; check the owner "
        "and permissions of the path"
    )


def test_9_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "3 ", "130", "143", "141"):
        assert f"\n  {code}" in out


# --- 10. small output defects ----------------------------------------------------------


def test_10_list_json_carries_ids_kind_and_schema(home, capsys):
    assert main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["kind"], data["schema"]) == ("transfer-bench.matrix", 1)
    ids = [c["cell_id"] for c in data["cells"]]
    assert ids == [c.cell_id for c in load_matrix("smoke").cells] and CELL in ids


@pytest.mark.parametrize("args", [["list"], ["list", "--json"], ["--help"]])
def test_10_a_closed_stdout_ends_quietly(bench_env, args):
    """The reader went away before bench wrote (``bench list | head -1``, deterministic)."""
    proc = subprocess.Popen(
        [*BENCH, *args], cwd=REPO, env=bench_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before bench has written anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141) and err == "", err
    if args != ["--help"]:  # argparse writes --help itself and exits 0 before main runs
        assert proc.returncode == 141


def test_10_cli_start_imports_nothing_heavy():
    """``bench --help``, ``--version`` and ``list`` build every parser: no matplotlib,
    TensorFlow, Keras or Docker SDK at import time (they cost seconds)."""
    code = (
        "import sys, harness.cli as c; c.build_parser(); "
        "print(sorted(m for m in ('matplotlib', 'tensorflow', 'keras', 'docker', 'jax') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
