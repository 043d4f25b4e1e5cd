"""`bench baseline accept`: explicit, versioned, with the run's fingerprint; refuses failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import runkit

from harness import runfolder
from harness.analysis import baseline, reprokey
from harness.cli import main
from harness.errors import InputError


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_HOME", str(tmp_path))


def test_accept_writes_the_profile_baseline_with_fingerprint(tmp_path, capsys):
    env = runkit.environment(cpu_model="Test CPU 9000", cpu_count=8)
    run_dir = runkit.write_run(
        tmp_path,
        runkit.standard_cells(),
        run_id="r1",
        env=env,
        tolerances={"accuracy_points": 1.5, "throughput_relative": 0.2},
    )
    assert not (tmp_path / "reports" / "baselines").exists()  # never written by a run itself
    assert main(["baseline", "accept", "r1"]) == 0
    key_id = reprokey.key_id(reprokey.run_key(env))
    target = tmp_path / "reports" / "baselines" / "smoke" / f"{key_id}.json"
    out = capsys.readouterr().out
    assert f"baseline for profile smoke, key {key_id}: run r1, 6 cell(s) -> {target}" in out
    assert "calibration: no noise seeds and no repeats" in out  # says how to calibrate
    raw = json.loads(target.read_text())
    assert raw["kind"] == "transfer-bench.baseline" and raw["schema"] == 2
    assert raw["key_id"] == key_id and raw["key"]["cpu.model"] == "Test CPU 9000"
    assert raw["environment"]["cpu"] == {"model": "Test CPU 9000", "count": 8}
    assert raw["tolerances"] == {"accuracy_points": 1.5, "throughput_relative": 0.2}
    assert raw["accepted_at"].endswith("Z") and raw["run_id"] == "r1"
    loaded = baseline.load(target, profile="smoke")
    assert list(loaded.cells) == runfolder.read_cells(run_dir)  # full records round-trip
    assert loaded.cell("synth-few/fine-tune/float32/s0").best_val_accuracy == 0.90


def test_accept_refuses_failed_cells_unless_forced(tmp_path, capsys):
    cells = [*runkit.standard_cells(), runkit.cell("synth-few", "two-stage", status="failed")]
    runkit.write_run(tmp_path, cells, run_id="r1")
    assert main(["baseline", "accept", "r1"]) == 1
    err = capsys.readouterr().err
    assert "1 failed cell(s) (synth-few/two-stage/float32/s0)" in err and "--force" in err
    assert baseline.stored("smoke") == []
    assert main(["baseline", "accept", "r1", "--force"]) == 0
    assert "forced: 1 failed cell(s) included" in capsys.readouterr().out
    (stored,) = baseline.stored("smoke")
    assert baseline.load(stored).forced


def test_unknown_run_exits_2_with_one_line(tmp_path, capsys):
    assert main(["baseline", "accept", "no-such-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run 'no-such-run': no run.json" in err


def test_accept_to_explicit_path_and_load_checks_profile(tmp_path):
    run_dir = runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r1", profile="reference")
    out = tmp_path / "elsewhere" / "ref.json"
    path, base = baseline.accept(run_dir, path=out)
    assert path == out and out.is_file() and base.profile == "reference"
    with pytest.raises(InputError, match="baseline is for profile 'reference'"):
        baseline.load(out, profile="smoke")


def test_incomplete_run_is_refused_unless_forced(tmp_path, capsys):
    cells = runkit.standard_cells()
    run_dir = runkit.write_run(tmp_path, cells, run_id="r1")
    (run_dir / "cells" / runfolder.cell_filename(cells[-1].cell_id)).unlink()  # never finished
    assert main(["baseline", "accept", "r1"]) == 2
    err = capsys.readouterr().err
    assert "run 'r1' is incomplete: 1 planned cell(s) have no result" in err
    assert err.count("\n") == 1
    assert main(["baseline", "accept", "r1", "--force"]) == 0
    (stored,) = baseline.stored("smoke")
    assert baseline.load(stored).forced
