"""`bench compare`: noise-aware verdicts and exit codes on real run folders."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import runkit

from harness import results, runfolder
from harness.analysis import baseline, compare
from harness.cli import main
from harness.history import gate


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_HOME", str(tmp_path))


def _accept(run_dir: Path) -> Path:
    path, _ = baseline.accept(run_dir)
    return path


def _compare(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["compare", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _cells_with(cell_id: str, **changes: object) -> list[results.CellResult]:
    return [replace(c, **changes) if c.cell_id == cell_id else c for c in runkit.standard_cells()]


def test_identical_runs_have_no_regression(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    base_dir = runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-base")
    _accept(base_dir)
    run_dir = runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-new")
    code, out, _ = _compare(capsys, "r-new")  # run id, default baseline of the profile
    assert code == 0
    assert (
        "OK: run r-new vs baseline r-base (profile smoke, statistical tier): 6 within noise" in out
    )
    # these fingerprints predate the lock and thread rule: no exact tier, said so
    assert "statistical tier: run key" in out and "lock: unknown -> unknown" not in out
    assert "throughput gated: same hardware identity" in out
    assert "regression" not in out.replace("(exit 1 on regression", "")
    comparison = gate.comparison(run_dir)
    assert {c.verdict for c in comparison.cells} == {compare.WITHIN_NOISE}
    assert all(
        m.change == pytest.approx(1.0)
        for c in comparison.cells
        for m in c.metrics
        if m.unit == "ratio"
    )


def test_accuracy_drop_beyond_tolerance_is_flagged(tmp_path, capsys):
    bl = _accept(runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-base"))
    cid = "synth-few/fine-tune/float32/s0"
    run_dir = runkit.write_run(tmp_path, _cells_with(cid, best_val_accuracy=0.86), run_id="r-new")
    code, out, _ = _compare(capsys, str(run_dir), "--baseline", str(bl))
    assert code == 1
    row = next(line for line in out.splitlines() if line.startswith(cid))
    assert "regression" in row
    assert "best val accuracy -4.00 pts (allowed ±2.00)" in row
    assert out.strip().splitlines()[-1].startswith("FAIL: run r-new")
    assert "1 regression" in out


def test_accuracy_drop_within_tolerance_is_not_flagged(tmp_path, capsys):
    bl = _accept(runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-base"))
    cid = "synth-few/fine-tune/float32/s0"
    run_dir = runkit.write_run(tmp_path, _cells_with(cid, best_val_accuracy=0.885), run_id="r-new")
    code, out, _ = _compare(capsys, str(run_dir), "--baseline", str(bl))
    assert code == 0, out
    cmp_ = gate.comparison(run_dir, bl)
    metric = next(c for c in cmp_.cells if c.cell_id == cid).metric("best val accuracy")
    assert metric.change == pytest.approx(-1.5)
    assert metric.verdict == compare.WITHIN_NOISE


def test_throughput_drop_beyond_tolerance_and_noise_is_flagged(tmp_path, capsys):
    bl = _accept(runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-base"))
    cid = "synth-xray/fine-tune/float32/s0"
    slow = runkit.throughput(1100.0 * 0.80, noise=0.02)
    run_dir = runkit.write_run(tmp_path, _cells_with(cid, train_throughput=slow), run_id="r-new")
    code, out, _ = _compare(capsys, str(run_dir), "--baseline", str(bl))
    assert code == 1
    row = next(line for line in out.splitlines() if line.startswith(cid))
    assert "regression" in row and "train throughput x0.800" in row


def test_same_drop_within_measured_noise_is_not_flagged(tmp_path, capsys):
    """A 15 % drop regresses when steps are steady, not when both sides scatter by ±40 %."""
    cid = "synth-xray/fine-tune/float32/s0"
    for noise, expected in ((0.01, 1), (0.40, 0)):
        root = tmp_path / f"noise{noise}"
        base_cells = _cells_with(cid, train_throughput=runkit.throughput(1000.0, noise=noise))
        bl = root / "baseline.json"
        baseline.accept(runkit.write_run(root, base_cells, run_id="r-base"), path=bl)
        slow = runkit.throughput(850.0, noise=noise, seed=7)
        run_dir = runkit.write_run(root, _cells_with(cid, train_throughput=slow), run_id="r-new")
        code, out, _ = _compare(capsys, str(run_dir), "--baseline", str(bl))
        assert code == expected, out
        metric = next(c for c in gate.comparison(run_dir, bl).cells if c.cell_id == cid).metric(
            "train throughput"
        )
        # allowed = tolerance + half of each side's relative IQR
        name = runfolder.cell_filename(cid)
        b, r = (
            runfolder.read_cell(d / "cells" / name).train_throughput
            for d in (root / "reports/runs/r-base", run_dir)
        )
        assert metric.allowed == pytest.approx(0.10 + (b.relative_spread + r.relative_spread) / 2)


def test_throughput_not_gated_across_hardware_but_accuracy_is(tmp_path, capsys):
    bl = _accept(runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-base"))
    other = runkit.environment(cpu_model="Intel Xeon Platinum 8480+", cpu_count=16)
    cid = "synth-few/fine-tune/float32/s0"
    slow = _cells_with(cid, train_throughput=runkit.throughput(200.0))
    run_dir = runkit.write_run(tmp_path, slow, run_id="r-other", env=other)
    code, out, _ = _compare(capsys, str(run_dir), "--baseline", str(bl))
    assert code == 0, out
    assert "throughput NOT gated (hardware differs: cpu.model: AMD EPYC 7B13 -> Intel" in out
    assert "accuracy still gated" in out
    # …but an accuracy drop on the other hardware is still a regression.
    worse = [replace(c, best_val_accuracy=0.80) if c.cell_id == cid else c for c in slow]
    run_dir = runkit.write_run(tmp_path, worse, run_id="r-other2", env=other)
    code, out, _ = _compare(capsys, str(run_dir), "--baseline", str(bl))
    assert code == 1
    row = next(line for line in out.splitlines() if line.startswith(cid))
    assert "best val accuracy -10.00 pts" in row and "regression" in row


def test_baseline_of_another_profile_exits_2(tmp_path, capsys):
    base_dir = runkit.write_run(
        tmp_path, runkit.standard_cells(), run_id="r-ref", profile="reference"
    )
    bl = _accept(base_dir)
    run_dir = runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-smoke")
    code, out, err = _compare(capsys, str(run_dir), "--baseline", str(bl))
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert "baseline is for profile 'reference', the run is profile 'smoke'" in err


def test_baseline_of_another_schema_or_unreadable_exits_2(tmp_path, capsys):
    bl = _accept(runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-base"))
    run_dir = runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-new")
    data = json.loads(bl.read_text())
    data["schema"] = 3
    bl.write_text(json.dumps(data))
    code, _, err = _compare(capsys, str(run_dir))
    assert code == 2 and err.count("\n") == 1
    assert "schema 3 is not supported" in err and str(bl) in err
    bl.write_text('{"kind": "transfer-bench.baseline", "schema": 1, "profile": ')
    code, _, err = _compare(capsys, str(run_dir))
    assert code == 2 and "not valid JSON" in err and err.count("\n") == 1
    bl.unlink()
    code, _, err = _compare(capsys, str(run_dir))
    assert code == 2 and "no baseline for profile 'smoke' in " in err and err.count("\n") == 1
    code, _, err = _compare(capsys, str(run_dir), "--baseline", str(bl))
    assert code == 2 and "no such file" in err


def test_failed_cell_exits_1(tmp_path, capsys):
    bl = _accept(runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-base"))
    cells = runkit.standard_cells()
    cells[0] = runkit.cell(
        "synth-few",
        "scratch",
        status="failed",
        error="ResourceExhaustedError: OOM when allocating tensor\ntrace…",
    )
    run_dir = runkit.write_run(tmp_path, cells, run_id="r-new")
    code, out, _ = _compare(capsys, str(run_dir), "--baseline", str(bl))
    assert code == 1
    row = next(line for line in out.splitlines() if line.startswith("synth-few/scratch"))
    assert "failed" in row and "ResourceExhaustedError: OOM" in row
    assert "1 failed" in out


def test_missing_new_and_not_comparable(tmp_path, capsys):
    bl = _accept(runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-base"))
    cells = runkit.standard_cells()
    dropped = cells.pop()  # synth-xray/fine-tune: missing from the run
    cells.append(runkit.cell("synth-many", "two-stage"))  # new
    cells[0] = replace(cells[0], config={**cells[0].config, "epochs": 9})  # not comparable
    run_dir = runkit.write_run(tmp_path, cells, run_id="r-new")
    code, out, _ = _compare(capsys, str(run_dir), "--baseline", str(bl), "--json")
    # one cell not compared (its config differs) of the 6 that ran: the gate is incomplete
    assert code == 4
    data = json.loads(out)
    assert data["kind"] == "transfer-bench.comparison" and data["schema"] == 2
    verdicts = {c["cell_id"]: c["verdict"] for c in data["cells"]}
    assert verdicts[dropped.cell_id] == "missing"
    assert verdicts["synth-many/two-stage/float32/s0"] == "new"
    assert verdicts[cells[0].cell_id] == "not comparable"
    reason = next(c["reason"] for c in data["cells"] if c["cell_id"] == cells[0].cell_id)
    assert reason == "config differs: epochs 4 -> 9"
    assert data["exit_code"] == 4 and data["counts"]["within noise"] == 4
    assert data["compared"] == 4 and data["required"] == 6
    assert "GATE OFF: 4 of 6 cells compared, 6 required" in data["gate_line"]
    assert "config differs from the baseline in: epochs (1 cells)" in data["gate_line"]


def test_improvement_is_reported_not_failed(tmp_path, capsys):
    bl = _accept(runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-base"))
    cid = "synth-few/scratch/float32/s0"
    run_dir = runkit.write_run(tmp_path, _cells_with(cid, best_val_accuracy=0.75), run_id="r-new")
    code, out, _ = _compare(capsys, str(run_dir), "--baseline", str(bl), "--json")
    assert code == 0
    data = json.loads(out)
    assert next(c for c in data["cells"] if c["cell_id"] == cid)["verdict"] == "improvement"


def test_seed_repeats_widen_the_accuracy_allowance(tmp_path):
    """Across seeds the accuracy scatters by 6 pts; a 4-pt drop of one seed is noise then."""

    def cells(vals: list[float]) -> list[results.CellResult]:
        return [runkit.cell("synth-few", "fine-tune", seed=s, val=v) for s, v in enumerate(vals)]

    bl = tmp_path / "b.json"
    baseline.accept(runkit.write_run(tmp_path, cells([0.90, 0.84, 0.87]), run_id="r-b"), path=bl)
    run_dir = runkit.write_run(tmp_path, cells([0.86, 0.84, 0.87]), run_id="r-n")
    comparison = gate.comparison(run_dir, bl)
    m = next(c for c in comparison.cells if c.cell_id.endswith("s0")).metric("best val accuracy")
    assert m.change == pytest.approx(-4.0)
    assert m.allowed == pytest.approx(2.0 + 3.0 + 1.5)  # tol + half range base + half range run
    assert m.verdict == compare.WITHIN_NOISE and comparison.exit_code == 0


def test_unknown_hardware_identity_is_not_gated(tmp_path):
    """Fingerprints that both lack the CPU model do not prove the same machine."""
    env = runkit.environment()
    env.pop("cpu")
    bl = tmp_path / "b.json"
    baseline.accept(
        runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-b", env=env), path=bl
    )
    run_dir = runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-n", env=env)
    comparison = gate.comparison(run_dir, bl)
    assert not comparison.throughput_gated
    assert comparison.hardware_differences == {"cpu.model": ("unknown", "unknown")}


def test_skipped_cell_is_not_comparable_and_does_not_fail(tmp_path, capsys):
    """A precision the device lacks is 'skipped' by the runner: shown, not a failure."""
    bl = _accept(runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-base"))
    cells = runkit.standard_cells()
    cells[0] = runkit.cell(
        "synth-few",
        "scratch",
        status="skipped",
        error="mixed_bfloat16 is not supported on this device",
    )
    run_dir = runkit.write_run(tmp_path, cells, run_id="r-new")
    code, out, _ = _compare(capsys, str(run_dir), "--baseline", str(bl))
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("synth-few/scratch"))
    assert "not comparable" in row and "skipped: mixed_bfloat16 is not supported" in row
    _, base = baseline.accept(run_dir, path=tmp_path / "b2.json")  # skipped is no failure
    assert not base.forced


def test_config_paths_and_devices_do_not_make_cells_incomparable():
    a = {
        "epochs": 3,
        "weights_file": "/home/a/w.h5",
        "devices": [{"kind": "CPU"}],
        "optimizer": {"name": "adam", "implementation": "fused"},
        "effective": {"batch_size": 32},
    }
    b = {
        "epochs": 3,
        "weights_file": "/ci/w.h5",
        "devices": [{"kind": "GPU"}],
        "optimizer": {"name": "adam", "implementation": "keras"},
        "effective": {"batch_size": 32},
    }
    assert compare.config_differences(a, b) == []
    b["effective"] = {"batch_size": 16}
    b["optimizer"]["name"] = "sgd"
    assert compare.config_differences(a, b) == ["effective.batch_size", "optimizer.name"]


REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_real_smoke_run_against_a_baseline_accepted_from_it(
    smoke_run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real smoke run (runner's session fixture) compares clean with itself, a degraded
    copy of it is flagged, and its report renders with every plot."""
    monkeypatch.setenv("BENCH_HOME", str(REPO))  # the real manifest; we write only to tmp_path
    bl = tmp_path / "smoke.json"
    assert main(["baseline", "accept", str(smoke_run_dir), "--output", str(bl)]) == 0
    capsys.readouterr()
    code, out, _ = _compare(capsys, str(smoke_run_dir), "--baseline", str(bl))
    n = len(runfolder.read_cells(smoke_run_dir))
    assert code == 0, out
    # the same run is its own baseline: same run key, every cell reproduces bit for bit
    assert f"OK: run smoke vs baseline smoke (profile smoke, exact tier): {n} identical" in out

    # The same run with one cell's accuracy 25 points lower changed: the exact tier names it.
    copy = tmp_path / "degraded"
    runfolder.write_run(copy, replace(runfolder.read_run(smoke_run_dir), run_id="degraded"))
    cells = runfolder.read_cells(smoke_run_dir)
    victim = max(cells, key=lambda c: c.best_val_accuracy or 0.0)
    for c in cells:
        if c.cell_id == victim.cell_id:
            c = replace(c, best_val_accuracy=c.best_val_accuracy - 0.25)
        runfolder.write_cell(copy, c)
    code, out, _ = _compare(capsys, str(copy), "--baseline", str(bl))
    assert code == 1, out
    row = next(line for line in out.splitlines() if line.startswith(victim.cell_id))
    assert "changed" in row and "first divergence: best val accuracy" in row

    assert (
        main(
            ["report", str(smoke_run_dir), "--baseline", str(bl), "--out", str(tmp_path / "report")]
        )
        == 0
    )
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Findings" in md and "| synth-many" in md
    plots = sorted(p.name for p in (tmp_path / "report" / "plots").iterdir())
    assert plots == [
        "accuracy_vs_throughput.png",
        "baseline_deltas.png",
        "curves_synth-few.png",
        "curves_synth-many.png",
        "curves_synth-xray.png",
        "throughput.png",
    ]
