"""`bench history`: the SQLite index over run folders, trends, steps, machines kept apart."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
from datetime import timedelta
from pathlib import Path

import nightly
import pytest
import runkit

from harness import history, runfolder
from harness.cli import main
from harness.history import index as index_mod
from harness.history.steps import StepModel, detect_steps


def _history(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["history", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _series(runs: Path, **filters: object) -> list[history.Series]:
    update = history.update_index(runs)
    conn = history.connect(update.db_path)
    try:
        return history.query(conn, **filters)  # type: ignore[arg-type]
    finally:
        conn.close()


def test_injected_throughput_step_is_found_at_the_right_run(tmp_path, capsys):
    runs = tmp_path / "runs"
    nights = nightly.write_history(runs, nights=8, step_at=5, factor=0.7)
    code, out, err = _history(capsys, "--runs-dir", str(runs), "--json")
    assert code == 0, err
    assert "history: 8 runs indexed (8 new" in err
    data = json.loads(out)
    assert data["kind"] == "transfer-bench.history"
    with_steps = [s for s in data["series"] if s["steps"]]
    # One step in the whole history: the fine-tune cell's train throughput, at night 5.
    assert [(s["cell_id"], s["metric"]) for s in with_steps] == [
        (nightly.STEP_CELL, "train_images_per_s")
    ]
    (step,) = with_steps[0]["steps"]
    step_run = runfolder.read_run(nights[5])
    assert step["run_id"] == step_run.run_id
    assert step["git_commit"] == step_run.git_commit == nightly.commit_of(5)
    assert step["index"] == 5
    assert step["relative"] == pytest.approx(-0.30, abs=0.03)
    # Every series spans all eight nights, in time order.
    assert all(len(s["points"]) == 8 for s in data["series"])
    started = [p["started_at"] for p in with_steps[0]["points"]]
    assert started == sorted(started)
    # The table names the run, the commit and the size.
    code, out, _ = _history(capsys, "--runs-dir", str(runs), "--steps-only")
    assert code == 0
    assert f"from run {step_run.run_id} (commit {nightly.commit_of(5)[:12]})" in out
    assert "-30." in out or "-29." in out or "-31." in out


def test_no_step_without_a_change(tmp_path):
    runs = tmp_path / "runs"
    nightly.write_history(runs, nights=8, step_at=None)
    series = _series(runs)
    assert len(series) == 6 * len(history.METRICS)  # every metric of every ok cell
    assert [s for s in series if s.steps] == []


def test_mixed_hardware_identities_are_kept_apart(tmp_path):
    """Two machines (and one machine on two locks) interleaved night by night: never one line."""
    runs = tmp_path / "runs"
    fast = nightly.environment(cpu_model="Fast CPU 9000", lock="a" * 64)
    slow = nightly.environment(cpu_model="Slow CPU 100", lock="a" * 64)
    slow_new_lock = nightly.environment(cpu_model="Slow CPU 100", lock="b" * 64)
    old = nightly.environment(cpu_model="Slow CPU 100", lock=None)  # predates lock digests
    for n in range(12):
        fast_cells = nightly.night_cells(n, rate_factor=2.0)  # twice the rate on the fast box
        nightly.write_night(runs, n, fast_cells, env=fast, run_id=f"n{n:02d}-fast")
        env = slow if n < 6 else slow_new_lock
        nightly.write_night(runs, n, nightly.night_cells(n), env=env, run_id=f"n{n:02d}-slow")
    nightly.write_night(runs, 12, nightly.night_cells(12), env=old, run_id="n12-old")
    series = _series(runs, cells=nightly.STEP_CELL, metrics=["train_images_per_s"])
    by_machine = {(s.hardware_label.split(" x")[0], s.lock_digest): s for s in series}
    assert set(by_machine) == {
        ("Fast CPU 9000", "a" * 64),
        ("Slow CPU 100", "a" * 64),
        ("Slow CPU 100", "b" * 64),
        ("Slow CPU 100", None),
    }
    assert len(by_machine[("Fast CPU 9000", "a" * 64)].points) == 12
    assert len(by_machine[("Slow CPU 100", "a" * 64)].points) == 6
    assert {p.run_id.split("-")[1] for p in by_machine[("Fast CPU 9000", "a" * 64)].points} == {
        "fast"
    }
    # Each line is flat: the 2x between machines is no step.
    assert [s.steps for s in series] == [()] * 4
    fast_values = [p.value for p in by_machine[("Fast CPU 9000", "a" * 64)].points]
    slow_values = [p.value for p in by_machine[("Slow CPU 100", "a" * 64)].points]
    assert min(fast_values) > 1.8 * max(slow_values)
    assert "lock not recorded" in by_machine[("Slow CPU 100", None)].machine


def test_corrupt_runs_are_skipped_with_one_line_each(tmp_path, capsys):
    runs = tmp_path / "runs"
    nightly.write_history(runs, nights=6, step_at=None)
    bad_json = nightly.write_night(runs, 6, nightly.night_cells(6))
    (bad_json / "run.json").write_text('{"kind": "transfer-bench.run", "schema": 1,')
    other_schema = nightly.write_night(runs, 7, nightly.night_cells(7))
    data = json.loads((other_schema / "run.json").read_text())
    (other_schema / "run.json").write_text(json.dumps({**data, "schema": 99}))
    bad_cell_run = nightly.write_night(runs, 8, nightly.night_cells(8))
    bad_cell = bad_cell_run / "cells" / runfolder.cell_filename(nightly.STEP_CELL)
    bad_cell.write_bytes(b"\x00\x01 not json")
    (runs / "stray-folder").mkdir()
    code, out, _ = _history(capsys, "--runs-dir", str(runs), "--cell", "nothing-matches")
    assert code == 0
    skip_lines = [line for line in out.splitlines() if line.startswith("history: skipped ")]
    assert len(skip_lines) == 4, out
    assert any(f"{bad_json / 'run.json'}: not valid JSON" in line for line in skip_lines)
    assert any(
        f"{other_schema / 'run.json'}: schema 99 is not supported" in line for line in skip_lines
    )
    assert any(f"{bad_cell}: not valid JSON" in line for line in skip_lines)
    assert any(f"{runs / 'stray-folder'}: no run.json" in line for line in skip_lines)
    # The good runs, and the good cells of the run with a bad cell, are indexed.
    assert "history: 7 runs indexed (7 new, 0 changed, 0 unchanged, 0 removed, 4 skipped)" in out
    series = _series(runs, metrics=["best_val_accuracy"])
    counts = {s.cell_id: len(s.points) for s in series}
    assert counts[nightly.STEP_CELL] == 6 and counts["synth-xray/scratch/float32/s0"] == 7
    # Unchanged on the next update: still reported, one line each, nothing re-read.
    code, out, _ = _history(capsys, "--runs-dir", str(runs), "--cell", "nothing-matches")
    assert "(0 new, 0 changed, 7 unchanged, 0 removed, 4 skipped)" in out
    assert out.count(": skipped ") == 4


def test_incremental_update_delete_and_rebuild(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    nights = nightly.write_history(runs, nights=6, step_at=3)
    first = history.update_index(runs)
    assert len(first.added) == 6 and first.db_path == runs / ".history.sqlite"
    before = [s.to_dict() for s in _series(runs)]

    parsed: list[str] = []
    real_parse = index_mod._parse
    monkeypatch.setattr(
        index_mod, "_parse", lambda d, sig: parsed.append(d.name) or real_parse(d, sig)
    )
    again = history.update_index(runs)
    assert (len(again.unchanged), again.added, again.updated, parsed) == (6, (), (), [])

    # A changed cell file (e.g. a resumed run) re-reads that run only; a deleted run leaves.
    changed = nights[2] / "cells" / runfolder.cell_filename("synth-xray/scratch/float32/s0")
    cell = runfolder.read_cell(changed)
    runfolder.write_cell(nights[2], cell.__class__(**{**cell.__dict__, "best_val_accuracy": 0.5}))
    for p in (nights[4] / "cells").iterdir():
        p.unlink()
    (nights[4] / "cells").rmdir()
    (nights[4] / "run.json").unlink()
    nights[4].rmdir()
    third = history.update_index(runs)
    assert third.updated == (nights[2].name,) and third.removed == (nights[4].name,)
    assert parsed == [nights[2].name]

    # The database is a cache: deleted, or not a database at all, it is rebuilt the same.
    after = [s.to_dict() for s in _series(runs)]
    first.db_path.unlink()
    assert [s.to_dict() for s in _series(runs)] == after
    first.db_path.write_bytes(b"this is not an sqlite database" * 100)
    rebuilt = history.update_index(runs)
    assert rebuilt.rebuilt and "not an index of this harness" in rebuilt.rebuilt
    assert len(rebuilt.added) == 5
    assert [s.to_dict() for s in _series(runs)] == after
    assert before != after


def _update_at(runs: str, start: float) -> str:
    """In a process of its own: wait for the common start, index ``runs``; what it got."""
    import time

    time.sleep(max(0.0, start - time.time()))
    try:
        history.update_index(Path(runs))
        return "ok"
    except Exception as exc:  # reported to the test, which names it
        return f"{type(exc).__name__}: {exc}"


def test_runs_ending_at_once_index_into_one_new_index(tmp_path):
    """Two runs (shards, --jobs on one runs folder) end at the same moment and both bring the
    index up to date, with none there yet: each must succeed, and the index hold every run
    once (replacing the index file under the other's connection was "disk I/O error")."""
    import concurrent.futures
    import multiprocessing
    import time

    runs = tmp_path / "runs"
    nightly.write_history(runs, nights=6, step_at=3)
    ctx = multiprocessing.get_context("spawn")
    for attempt in range(3):  # a fresh index each time: the race is at its creation
        (runs / ".history.sqlite").unlink(missing_ok=True)
        with concurrent.futures.ProcessPoolExecutor(4, mp_context=ctx) as pool:
            start = time.time() + 3.0  # after the workers have imported the harness
            got = list(pool.map(_update_at, [str(runs)] * 4, [start] * 4))
        assert all(g.startswith("ok") for g in got), (attempt, got)
        assert len(history.update_index(runs).unchanged) == 6
        with sqlite3.connect(runs / ".history.sqlite") as conn:
            assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 6
        assert not [p.name for p in runs.iterdir() if p.name.endswith(".new")]


def test_a_failed_update_leaves_the_previous_index(tmp_path, monkeypatch):
    """One transaction per update: a reader sees the index before or after it, never half."""
    runs = tmp_path / "runs"
    nightly.write_history(runs, nights=6, step_at=None)
    history.update_index(runs)
    for n in (6, 7):
        nightly.write_night(runs, n, nightly.night_cells(n))
    real_write = index_mod._write_run
    calls: list[str] = []

    def failing_write(conn: sqlite3.Connection, parsed: object) -> None:
        calls.append("x")
        if len(calls) == 2:
            raise sqlite3.OperationalError("disk I/O error (simulated)")
        real_write(conn, parsed)  # type: ignore[arg-type]

    monkeypatch.setattr(index_mod, "_write_run", failing_write)
    with pytest.raises(Exception, match="simulated"):
        history.update_index(runs)
    conn = sqlite3.connect(runs / ".history.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (6,)
    conn.close()
    monkeypatch.setattr(index_mod, "_write_run", real_write)
    assert len(history.update_index(runs).added) == 2


def test_order_by_commit_follows_git_history(tmp_path):
    """Runs started out of commit order (a re-run of an old commit) are placed by commit."""
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    git("init", "-q")
    commits = []
    for i in range(3):
        (repo / "f").write_text(str(i))
        git("add", "f")
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", f"c{i}")
        commits.append(git("rev-parse", "HEAD"))
    runs = tmp_path / "runs"
    # Started in the order c2, c0, c1 (short id and +dirty must still be placed).
    for n, commit in enumerate([commits[2], commits[0][:10], commits[1] + "+dirty"]):
        nightly.write_night(runs, n, nightly.night_cells(n), commit=commit)
    nightly.write_night(runs, 3, nightly.night_cells(3), commit="f" * 40)  # not in this history
    update = history.update_index(runs)
    conn = history.connect(update.db_path)
    by_time = history.query(conn, cells=nightly.STEP_CELL, metrics=["best_val_accuracy"])
    by_commit = history.query(
        conn, cells=nightly.STEP_CELL, metrics=["best_val_accuracy"], order="commit", repo=repo
    )
    conn.close()
    assert [p.git_commit[:7] for p in by_time[0].points] == [
        commits[2][:7], commits[0][:7], commits[1][:7], "fffffff",
    ]  # fmt: skip
    assert [p.git_commit[:7] for p in by_commit[0].points] == [
        commits[0][:7], commits[1][:7], commits[2][:7], "fffffff",
    ]  # fmt: skip


def test_dry_runs_and_failed_cells_are_not_trended(tmp_path):
    runs = tmp_path / "runs"
    nightly.write_history(runs, nights=6, step_at=None)
    cells = nightly.night_cells(6)
    cells[0] = runkit.cell("synth-few", "scratch", status="failed")
    nightly.write_night(runs, 6, cells)
    dry = nightly.write_night(runs, 7, nightly.night_cells(7))
    info = runfolder.read_run(dry)
    runfolder.write_run(dry, info.__class__(**{**info.__dict__, "matrix": {"dry_run": True}}))
    series = {s.cell_id: s for s in _series(runs, metrics=["best_val_accuracy"])}
    assert len(series["synth-few/scratch/float32/s0"].points) == 6
    assert len(series["synth-xray/scratch/float32/s0"].points) == 7


def test_step_detection_method():
    rng = random.Random(3)
    flat = [400 * (1 + rng.gauss(0, 0.03)) for _ in range(30)]
    assert detect_steps(flat) == []
    # One odd night is no step (L1 fit); two nights on the new level are.
    assert detect_steps([400.0] * 4 + [900.0] + [400.0] * 4) == []
    (step,) = detect_steps([400.0] * 4 + [300.0] * 2)
    assert step.index == 4 and step.relative == pytest.approx(-0.25)
    # Accuracy steps are in points; below min_step they are not reported.
    acc = StepModel(scale="linear", min_step=0.01, sigma_floor=0.002)
    assert detect_steps([0.90] * 5 + [0.895] * 5, acc) == []
    (step,) = detect_steps([0.90] * 5 + [0.86] * 5, acc)
    assert step.index == 5 and step.absolute == pytest.approx(-0.04)
    with pytest.raises(ValueError, match="positive values"):
        detect_steps([1.0, 0.0, 1.0, 2.0])


def test_missing_runs_dir_is_bad_input(tmp_path, capsys):
    code = main(["history", "--runs-dir", str(tmp_path / "nope")])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "no such folder" in err


def test_runs_spanning_two_profiles(tmp_path):
    runs = tmp_path / "runs"
    nightly.write_history(runs, nights=6, step_at=None)
    start = nightly.FIRST_NIGHT + timedelta(hours=1)
    for n in range(3):
        nightly.write_night(
            runs, n, nightly.night_cells(n), profile="throughput", when=start + timedelta(days=n)
        )
    assert {s.profile for s in _series(runs)} == {"smoke", "throughput"}
    assert {s.profile for s in _series(runs, profile="throughput")} == {"throughput"}
