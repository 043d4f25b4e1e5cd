"""`bench report`: markdown tables and PNG plots, checked as files a person would open."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import matplotlib.image
import pytest
import runkit

from harness.analysis import baseline
from harness.cli import main


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_HOME", str(tmp_path))


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.stat().st_size > 15_000, f"{path} is suspiciously small"
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    assert width >= 800 and height >= 300
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_report_with_baseline_renders_tables_and_all_plots(tmp_path, capsys):
    cells = runkit.standard_cells()
    baseline.accept(runkit.write_run(tmp_path, cells, run_id="r-base"))
    cid = "synth-few/fine-tune/float32/s0"
    new = [replace(c, best_val_accuracy=0.80) if c.cell_id == cid else c for c in cells]
    new.append(
        runkit.cell("synth-xray", "two-stage", status="failed", error="ValueError: nan loss")
    )
    run_dir = runkit.write_run(tmp_path, new, run_id="r-new")
    assert main(["report", "r-new"]) == 0
    out = capsys.readouterr().out
    md_path = run_dir / "report" / "report.md"
    assert f"report: {md_path}" in out
    assert "FAIL: run r-new vs baseline r-base" in out
    md = md_path.read_text()
    for heading in ("## Results matrix", "## Findings", "## Baseline comparison", "## Environment"):
        assert heading in md
    # the experiment-style pivot, the per-cell matrix and the verdict table (GitHub format)
    assert "| dataset    | scratch   | feature-extract   | fine-tune   | two-stage   |" in md
    assert "| synth-few  | 80 / 62   | 91 / 88           | 98 / 80     |" in md
    assert "|   best train acc % |" in md and "train img/s median [IQR]" in md
    assert "train: batch 32, float32, real input, 3 warm-up step(s) excluded" in md
    assert f"| {cid}" in md and "| regression" in md
    assert "failed: ValueError: nan loss" in md
    assert "| cpu.model       | AMD EPYC 7B13" in md
    plots = run_dir / "report" / "plots"
    expected = [
        "curves_synth-few.png",
        "curves_synth-xray.png",
        "accuracy_vs_throughput.png",
        "throughput.png",
        "baseline_deltas.png",
    ]
    for name in expected:
        _assert_png(plots / name)
        assert f"(plots/{name})" in md
    assert sorted(p.name for p in plots.iterdir()) == sorted(expected)  # no temp files left


def test_report_without_baseline_to_out_dir(tmp_path, capsys):
    run_dir = runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r1")
    out = tmp_path / "somewhere"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    assert "no baseline for profile smoke" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "No baseline for profile `smoke`" in md
    assert not (out / "plots" / "baseline_deltas.png").exists()
    _assert_png(out / "plots" / "accuracy_vs_throughput.png")
    assert not (run_dir / "report").exists()


def test_report_with_explicit_bad_baseline_exits_2(tmp_path, capsys):
    run_dir = runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r1")
    bogus = tmp_path / "b.json"
    bogus.write_text('{"kind": "transfer-bench.cell", "schema": 1}')
    assert main(["report", str(run_dir), "--baseline", str(bogus)]) == 2
    err = capsys.readouterr().err
    assert "expected a 'transfer-bench.baseline' file" in err and err.count("\n") == 1
