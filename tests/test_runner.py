"""The runner through the real CLI: determinism, SIGKILL + resume, failures, dry run.

Cells here are tiny (32 px, alpha 0.35, synthetic uint8 input, a few steps) so the
behaviour is tested, not the model quality; each cell still runs in its own process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import tinymatrix
from tinymatrix import SYNTHETIC, group

from harness import runfolder
from harness.results import CellResult

REPO = Path(__file__).resolve().parent.parent
Run = Callable[..., subprocess.CompletedProcess[str]]


def read(run_dir: Path, cell_id: str) -> CellResult:
    return runfolder.read_cell(run_dir / "cells" / runfolder.cell_filename(cell_id))


def learning_curve(res: CellResult) -> list[tuple]:
    return [(h.loss, h.accuracy, h.val_loss, h.val_accuracy, h.learning_rate) for h in res.history]


@pytest.mark.slow
def test_same_seed_is_bit_identical_other_seed_differs(
    smoke_run_dir: Path, tmp_path: Path, run_bench: Run
) -> None:
    """A smoke cell run again in its own process (same seed) against the smoke run's result."""
    smoke = (REPO / "benchmarks" / "smoke.toml").read_text()
    profile = tmp_path / "again.toml"
    profile.write_text(
        smoke[: smoke.index("[[cells]]")]
        + '[[cells]]\ndatasets = ["synth-xray"]\nstrategies = ["fine-tune"]\n'
        'precisions = ["float32"]\nseeds = [0, 1]\n'
    )
    proc = run_bench("all", "--profile", str(profile), "--runs-dir", str(tmp_path), "--run-id", "b")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cid0, cid1 = "synth-xray/fine-tune/float32/s0", "synth-xray/fine-tune/float32/s1"
    a0, b0, b1 = read(smoke_run_dir, cid0), read(tmp_path / "b", cid0), read(tmp_path / "b", cid1)
    assert a0.ok and b0.ok and b1.ok
    assert a0.deterministic and a0.config["determinism"] != "off"
    assert len(a0.history) == 3
    assert learning_curve(a0) == learning_curve(b0)
    assert a0.test_accuracy == b0.test_accuracy
    assert a0.weights_digest == b0.weights_digest
    assert a0.weights_digest != b1.weights_digest
    assert learning_curve(a0) != learning_curve(b1)


@pytest.mark.slow
def test_sigkill_then_resume_keeps_finished_cells_and_completes(
    tmp_path: Path, bench_env: dict[str, str]
) -> None:
    profile = tinymatrix.write(
        tmp_path,
        group("tiny", ["feature-extract", "linear-probe"], dense_units=0, **SYNTHETIC),
        # passes the pre-flight, fails in its process: the loss diverges (NaN)
        group("tiny", "fine-tune", learning_rate=1e38, **SYNTHETIC),
    )
    runs = tmp_path / "runs"
    cmd = [
        *(sys.executable, "-m", "harness.cli", "all", "--profile", str(profile)),
        *("--runs-dir", str(runs), "--run-id", "r"),
    ]
    cells_dir = runs / "r" / "cells"
    proc = subprocess.Popen(
        cmd, env=bench_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if cells_dir.is_dir() and any(cells_dir.glob("*.json")):
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # the cell process dies with its parent (PR_SET_PDEATHSIG)
    before = {p.name: p.read_bytes() for p in cells_dir.glob("*.json")}
    assert len(before) == 1, sorted(before)
    assert not (runs / "r" / "run.json").read_text().count('"finished_at": "')

    resumed = subprocess.run(
        [*cmd, "--resume"], env=bench_env, capture_output=True, text=True, timeout=600,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr  # one cell fails
    for name, data in before.items():
        assert (cells_dir / name).read_bytes() == data, f"{name} changed on resume"
    done = {p.name: runfolder.read_cell(p) for p in cells_dir.glob("*.json")}
    assert len(done) == 3
    failed = read(runs / "r", "tiny/fine-tune-random/float32/s0")
    assert failed.status == "failed" and "training diverged" in (failed.error or "")
    assert read(runs / "r", "tiny/feature-extract-random/float32/s0").ok
    probe = read(runs / "r", "tiny/linear-probe-random/float32/s0")
    assert probe.ok and probe.extra["feature_cache"]["images"] > 0
    info = runfolder.read_run(runs / "r")
    assert info.finished_at and len(info.cell_ids) == 3
    assert "failed: tiny/fine-tune-random/float32/s0" in resumed.stdout


@pytest.mark.slow
def test_reference_dry_run_cell_is_full_size_and_says_so(tmp_path: Path, run_bench: Run) -> None:
    cid = "chest-xray/feature-extract/mixed_float16/s0"
    proc = run_bench(
        "run", cid, "--profile", "reference", "--dry-run",
        "--runs-dir", str(tmp_path), "--run-id", "dry",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = read(tmp_path / "dry", cid)
    assert res.ok and res.config["dry_run"] is True
    assert res.config["image_size"] == 224 and res.config["effective"]["batch_size"] == 4
    assert "RANDOM weights" in res.config["strategy_plan"]["weights_note"]
    notes = " ".join(res.extra.get("notes", []))
    assert "mixed_float16 needs a GPU" in notes
    assert res.frozen_layers == 154 and res.trainable_layers == 2
    assert res.config["optimizer"]["loss_scaling"] is True
    assert res.config["optimizer"]["learning_rate"] == 1e-3


def test_mixed_float16_on_cpu_is_refused_before_the_run(tmp_path: Path, run_bench: Run) -> None:
    """A precision this machine cannot run is a pre-flight input error: one line, exit 2,
    and no run folder (nothing started)."""
    profile = tinymatrix.write(
        tmp_path, group("tiny", "scratch", precisions=["mixed_float16"], **SYNTHETIC)
    )
    proc = run_bench("all", "--profile", str(profile), "--runs-dir", str(tmp_path), "--run-id", "p")
    if proc.returncode == 0:  # pragma: no cover
        pytest.skip("a GPU is visible: mixed_float16 is supported here")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "pre-flight" in lines[0] and "mixed_float16 needs a GPU" in lines[0]
    assert not (tmp_path / "p").exists()


def test_bad_arguments_exit_2(tmp_path: Path, run_bench: Run) -> None:
    proc = run_bench("all", "--profile", "nope", "--runs-dir", str(tmp_path))
    assert proc.returncode == 2 and "no matrix file for profile 'nope'" in proc.stderr
    proc = run_bench("all", "--only", "zzz", "--runs-dir", str(tmp_path))
    assert proc.returncode == 2 and "--only 'zzz' matches no cell" in proc.stderr
    proc = run_bench("all", "--backend", "theano", "--runs-dir", str(tmp_path))
    assert proc.returncode == 2 and "--backend 'theano'" in proc.stderr
    proc = run_bench("all", "--resume", "--runs-dir", str(tmp_path))
    assert proc.returncode == 2 and "--resume: no run of profile 'smoke'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_list_json_is_the_resolved_matrix(run_bench: Run) -> None:
    import json

    proc = run_bench("list", "--profile", "reference", "--json")
    data = json.loads(proc.stdout)
    assert len(data["cells"]) == 12 and data["tolerances"]["throughput_relative"] == 0.1
    proc = run_bench("list", BENCH_PROFILE="throughput")
    assert "synthetic-224/linear-probe-random/mixed_bfloat16/s0" in proc.stdout


def test_backend_axis_ids_and_the_backend_option(tmp_path: Path, run_bench: Run) -> None:
    """A ``backends`` axis: ids show the non-default backend; ``--backend`` picks its cells,
    and one that matches none of them is a one-line error (exit 2) before anything runs."""
    profile = tinymatrix.write(
        tmp_path, group("tiny", "scratch", backends=["tensorflow", "jax"], **SYNTHETIC)
    )
    listed = run_bench("list", "--profile", str(profile))
    assert listed.returncode == 0, listed.stderr
    assert "tiny/scratch/float32/s0 " in listed.stdout
    assert "tiny/scratch/float32/s0/jax " in listed.stdout
    only_tf = tmp_path / "tf-only.toml"
    only_tf.write_text(profile.read_text().replace('["tensorflow", "jax"]', '["tensorflow"]'))
    proc = run_bench(
        "all", "--profile", str(only_tf), "--backend", "jax", "--runs-dir", str(tmp_path)
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--backend 'jax': none of the 1 selected cells runs on it" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.glob("*/run.json"))
