"""Executors (issue 10): where cells run changes nothing they compute, and loses nothing.

Every run here is the real CLI on four tiny cells (32 px, alpha 0.35, random weights,
synthetic input, two steps, one epoch). The serial reference is the merge of the two
shards (``--shard 1/2`` and ``--shard 2/2``, each serial), so one set of cell runs shows
both that shards merge into the whole cell set and what the parallel runs must equal:
``--jobs 2`` (with the driver killed mid-run and ``--resume``d) and a real Dask cluster
on loopback (a scheduler and two workers started here, one worker killed mid-cell).
Bad inputs need no cells and are fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import runkit
import tinymatrix
from conftest import BENCH, REPO

from harness import runfolder
from harness.results import CellResult
from harness.run.repeats import combine
from harness.run.shard import parse_shard, shard_of

LINEAR_PROBE = tinymatrix.group("tiny", "linear-probe", seeds=[0, 1, 2, 3])
SMALL = {  # a cell as small as a cell gets: linear-probe, one epoch of 2 steps
    "drop": ("augmentation",),
    "steps_per_epoch": 2,
    "epochs": 1,
    "warmup_steps": 0,
    **tinymatrix.SYNTHETIC,
}
PROFILE = tinymatrix.toml(LINEAR_PROBE, **SMALL)
CELLS = [f"tiny/linear-probe-random/float32/s{s}" for s in range(4)]


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def cells_of(run_dir: Path) -> dict[str, CellResult]:
    found = (runfolder.read_cell(p) for p in (run_dir / "cells").glob("*.json"))
    return {c.cell_id: c for c in found}


def computed(c: CellResult) -> tuple:
    """What a cell computes, and the intra-op threads it chose by the thread rule (neither
    may depend on where it ran: serial, --jobs or Dask give a 32 px cell one thread)."""
    curve = [(h.loss, h.accuracy, h.val_loss, h.val_accuracy) for h in c.history]
    plan = c.extra["placement"]["thread_plan"]
    threads = (plan["source"], plan["intra_op"], plan["rule"])
    return (c.status, curve, c.weights_digest, c.test_accuracy, c.best_val_accuracy, threads)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("executors")
    (root / "tiny.toml").write_text(PROFILE)
    return root


def bench_all(work: Path, run_id: str, *more: str) -> list[str]:
    return [
        *BENCH, "all", "--profile", str(work / "tiny.toml"), "--runs-dir", str(work / "runs"),
        "--run-id", run_id, "--no-compare", *more,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def serial(work: Path, bench_env: dict[str, str]) -> dict[str, CellResult]:
    """Shard 1/2 and 2/2 (each serial, side by side), merged: the reference cell set."""
    assert {shard_of(c, 2) for c in CELLS} == {1, 2}  # both shards have cells
    shards = [  # side by side: both record the same code revision (HEAD may move)
        subprocess.Popen(
            bench_all(work, f"shard{i}", "--shard", f"{i}/2"),
            env=bench_env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in (1, 2)
    ]
    for i, proc in enumerate(shards, 1):
        out, _ = proc.communicate(timeout=1200)
        assert proc.returncode == 0, out
        assert set(cells_of(work / "runs" / f"shard{i}")) == {
            c for c in CELLS if shard_of(c, 2) == i
        }
    runs = work / "runs"
    proc = subprocess.run(
        [*BENCH, "merge", str(runs / "shard1"), str(runs / "shard2"), "--out", str(runs / "all")],
        env=bench_env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return cells_of(runs / "all")


@pytest.mark.slow
def test_shards_merge_into_the_whole_cell_set(serial: dict[str, CellResult], work: Path) -> None:
    assert sorted(serial) == sorted(CELLS)
    assert all(c.ok and c.extra["placement"]["executor"] == "serial" for c in serial.values())
    info = runfolder.read_run(work / "runs" / "all")
    assert sorted(info.cell_ids) == sorted(CELLS) and info.finished_at
    assert [m["shard"] for m in info.matrix["merged_from"]] == ["1/2", "2/2"]
    assert len(list((work / "runs" / "all" / "logs").glob("*.log"))) == 4


@pytest.mark.slow
def test_jobs_2_driver_killed_then_resumed_equals_serial(
    serial: dict[str, CellResult], work: Path, bench_env: dict[str, str]
) -> None:
    cmd = bench_all(work, "jobs", "--jobs", "2")
    cells_dir = work / "runs" / "jobs" / "cells"
    proc = subprocess.Popen(
        cmd, env=bench_env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        if cells_dir.is_dir() and any(cells_dir.glob("*.json")):
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # its cell processes die with it (PR_SET_PDEATHSIG)
    before = {p.name: p.read_bytes() for p in cells_dir.glob("*.json")}
    assert 1 <= len(before) < 4

    resumed = subprocess.run(
        [*cmd, "--resume"], env=bench_env, cwd=REPO, capture_output=True, text=True, timeout=1200
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    for name, data in before.items():
        assert (cells_dir / name).read_bytes() == data, f"{name} changed on resume"
    got = cells_of(work / "runs" / "jobs")
    assert sorted(got) == sorted(CELLS)
    for cid in CELLS:
        assert computed(got[cid]) == computed(serial[cid]), cid
        placed = got[cid].extra["placement"]
        assert placed["executor"] == "local" and placed["shared"] is True
        assert placed["concurrent_cells"] == 2
    info = runfolder.read_run(work / "runs" / "jobs")
    assert info.environment["executor"]["throughput_shared"] is True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def cluster(work: Path, env: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """A scheduler and two workers (nanny + one thread each) on loopback; their temporary
    folders under one marked folder, so the test can find the cells they run."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    marker = work / "worker-tmp"
    marker.mkdir(exist_ok=True)
    wenv = {**env, "TMPDIR": str(marker)}
    logs = work / "dask-logs"
    logs.mkdir(exist_ok=True)
    scheduler = [
        *(sys.executable, "-m", "distributed.cli.dask_scheduler"),
        *("--host", "127.0.0.1", "--port", str(port), "--no-dashboard"),
    ]
    worker = [
        *(sys.executable, "-m", "distributed.cli.dask_worker", address),
        *("--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard", "--death-timeout", "60"),
    ]
    procs = []
    for name, cmd, penv in (
        ("scheduler", scheduler, env),
        ("w1", [*worker, "--name", "w1"], wenv),
        ("w2", [*worker, "--name", "w2"], wenv),
    ):
        with open(logs / f"{name}.log", "w") as log:
            procs.append(
                subprocess.Popen(cmd, env=penv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
            )
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address, marker
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def cell_processes(marker: Path) -> list[tuple[int, int]]:
    """(pid, parent pid) of the cell processes the test's workers run."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if b"harness.cell.process" in cmd and any(str(marker).encode() in a for a in cmd):
            found.append((int(entry.name), int(stat.rsplit(")", 1)[1].split()[1])))
    return found


@pytest.mark.slow
def test_dask_cluster_equals_serial_and_retries_a_lost_worker(
    serial: dict[str, CellResult], work: Path, bench_env: dict[str, str]
) -> None:
    with cluster(work, bench_env) as (address, marker):
        cmd = bench_all(work, "dask", "--executor", "dask", "--scheduler", address)
        proc = subprocess.Popen(
            cmd, env=bench_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        killed = None
        deadline = time.monotonic() + 900
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            running = cell_processes(marker)
            if running:
                time.sleep(3.0)  # mid-cell: started, not finished
                for pid, parent in cell_processes(marker):
                    if pid == running[0][0]:
                        os.kill(parent, signal.SIGKILL)  # the worker process (its nanny stays)
                        killed = parent
            time.sleep(0.2)
        out, _ = proc.communicate(timeout=1500)
    assert killed is not None, f"no cell was seen running to kill its worker:\n{out}"
    assert proc.returncode == 0, out
    got = cells_of(work / "runs" / "dask")
    assert sorted(got) == sorted(CELLS)
    for cid in CELLS:
        assert computed(got[cid]) == computed(serial[cid]), cid
        assert got[cid].extra["placement"]["executor"] == "dask"
    retried = [c for c in got.values() if len(c.extra["placement"].get("attempts", [])) == 2]
    assert len(retried) == 1, [c.extra["placement"] for c in got.values()]
    first, second = retried[0].extra["placement"]["attempts"]
    assert first["outcome"] == "worker lost" and first["worker_pid"] == killed
    assert second["outcome"] == "finished"
    assert "was lost" in out
    info = runfolder.read_run(work / "runs" / "dask")
    assert info.environment["executor"]["name"] == "dask"
    assert info.environment["executor"]["workers"] == 2


# --- bad inputs: one line, exit 2, nothing written (no cell runs) --------------------------


def bench_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The CLI in this process (a subprocess costs half a minute on a loaded machine)."""
    from harness.cli import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


def test_bad_scheduler_unreachable_cluster_and_shard_exit_2(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = work / "bad-runs"
    common = ("all", "--profile", str(work / "tiny.toml"), "--runs-dir", str(runs))
    code, err = bench_main(capsys, *common, "--executor", "dask", "--scheduler", "127.0.0.1")
    assert code == 2 and "--scheduler '127.0.0.1'" in one_line(err)
    monkeypatch.setenv("BENCH_DASK_TIMEOUT", "2")
    code, err = bench_main(capsys, *common, "--scheduler", "tcp://127.0.0.1:1")
    assert code == 2 and "no Dask scheduler answered within 2 s" in one_line(err), err
    code, err = bench_main(capsys, *common, "--shard", "3/2")
    assert code == 2 and "--shard '3/2'" in one_line(err)
    code, err = bench_main(capsys, *common, "--jobs", "0")
    assert code == 2 and "--jobs 0" in one_line(err)
    assert not runs.exists()


def test_merge_refuses_mismatched_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = runkit.write_run(tmp_path / "a", [runkit.cell(seed=0)], profile="smoke")
    b = runkit.write_run(tmp_path / "b", [runkit.cell(seed=1)], profile="throughput")
    code, err = bench_main(capsys, "merge", str(a), str(b), "--out", str(tmp_path / "m"))
    assert code == 2 and "profile 'throughput'" in one_line(err), err
    c = runkit.write_run(
        tmp_path / "c", [runkit.cell(seed=1)], profile="smoke",
        env=runkit.environment(lock={"digest": "0" * 64}),
    )  # fmt: skip
    code, err = bench_main(capsys, "merge", str(a), str(c), "--out", str(tmp_path / "m"))
    assert code == 2 and "lock digest" in one_line(err), err
    assert not (tmp_path / "m").exists()


def test_shard_spec_and_split_are_stable() -> None:
    assert str(parse_shard("2/3")) == "2/3"
    for bad in ("3/2", "0/2", "1/0", "a/b", "1"):
        with pytest.raises(Exception, match="--shard"):
            parse_shard(bad)
    ids = [f"d/s/float32/s{i}" for i in range(50)]
    split = [c for i in (1, 2, 3) for c in ids if parse_shard(f"{i}/3").holds(c)]
    assert sorted(split) == sorted(ids)  # every cell exactly once
    assert shard_of("d/s/float32/s7", 3) == shard_of("d/s/float32/s7", 3)


def test_repeats_keep_per_repeat_medians_and_their_spread() -> None:
    reps = [runkit.cell(rate=r, seed=0) for r in (400.0, 380.0, 420.0)]
    out = combine(reps)
    summary = out.extra["repeats"]
    assert summary["repeats"] == 3 and len(summary["images_per_s"]) == 3
    assert {"median", "iqr", "cv"} <= set(summary["summary"])
    assert out.train_throughput == reps[summary["median_repeat"] - 1].train_throughput
    assert summary["median_repeat"] == 1  # 400 img/s is the median of 380, 400, 420
    failed = combine([reps[0], runkit.cell(status="failed", error="boom")])
    assert failed.status == "failed" and failed.error.startswith("repeat 2/2 failed: boom")


def test_repeats_field_is_validated(tmp_path: Path) -> None:
    from harness.errors import InputError
    from harness.matrix import load_matrix

    path = tmp_path / "r.toml"
    path.write_text(tinymatrix.toml({**LINEAR_PROBE, "repeats": 3}, **SMALL))
    assert {c.repeats for c in load_matrix(str(path)).cells} == {3}
    assert "repeats" in load_matrix(str(path)).cells[0].to_dict()
    path.write_text(tinymatrix.toml({**LINEAR_PROBE, "repeats": 0}, **SMALL))
    with pytest.raises(InputError, match="repeats"):
        load_matrix(str(path))
    path.write_text(PROFILE)
    assert "repeats" not in load_matrix(str(path)).cells[0].to_dict()  # old configs unchanged


def test_placement_env_is_recorded_by_the_cell_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.cell import process as cellproc

    monkeypatch.setenv(cellproc.PLACEMENT_ENV, json.dumps({"executor": "local", "slot": 1}))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    placed = cellproc.placement()
    assert placed["executor"] == "local" and placed["slot"] == 1
    assert placed["cuda_visible_devices"] == "3" and "threads" in placed


def test_devices_pin_one_gpu_per_slot_and_jobs_divide_the_cores() -> None:
    from harness.errors import InputError
    from harness.executors import from_options
    from harness.executors.local import LocalExecutor, divide, parse_devices

    ex = LocalExecutor(devices=parse_devices("0,1"))
    envs = [ex.slot_env(s) for s in ex.slots]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1"]
    assert json.loads(envs[1]["BENCH_PLACEMENT"])["device"] == "1"
    assert ex.describe()["throughput_shared"] is False  # a GPU each: nothing shared
    slots = divide(2, cpus=[0, 1, 2, 3])
    assert [s.cpus for s in slots] == [(0, 1), (2, 3)] and slots[0].threads == 2
    assert divide(3, cpus=[0, 1])[2].oversubscribed
    jobs = from_options(jobs=2)
    assert jobs.describe()["throughput_shared"] is True
    slot_env = jobs.slot_env(jobs.slots[0])
    # the slot pins cores; the cell picks its threads within them (harness.threads)
    assert slot_env["BENCH_CPU_AFFINITY"] == ",".join(map(str, jobs.slots[0].cpus))
    assert "OMP_NUM_THREADS" not in slot_env
    assert from_options().name == "serial"
    for kwargs, match in (
        ({"devices": "0,0"}, "named twice"),
        ({"devices": "gpu0"}, "--devices 'gpu0'"),
        ({"jobs": 2, "devices": "0"}, "give one"),
        ({"executor": "dask"}, "needs --scheduler"),
        ({"executor": "serial", "jobs": 2}, "one cell at a time"),
    ):
        with pytest.raises(InputError, match=match):
            from_options(**kwargs)  # type: ignore[arg-type]


def test_report_marks_shared_throughput_and_shows_repeats() -> None:
    import dataclasses

    from harness.analysis import report

    shared = runkit.cell(seed=0)
    shared = dataclasses.replace(shared, extra={"placement": {"shared": True}})
    reps = combine([runkit.cell(seed=1, rate=r) for r in (400.0, 380.0, 420.0)])
    rows = report.matrix_rows([shared, reps])
    assert any(str(r[12]).endswith(report.SHARED_MARK) for r in rows)
    text = "\n".join(report._scale_out_notes([shared, reps]))
    assert "shared the CPU" in text and "CV %" in text and reps.cell_id in text
