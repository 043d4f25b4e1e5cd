"""CI gates itself: the session's real smoke run against the committed smoke baseline.

``reports/baselines/smoke.json`` is accepted explicitly (``bench baseline accept``); when
a change moves a smoke result beyond its tolerance, or changes a cell's configuration so
it no longer compares, this test fails until the change is fixed or a new baseline is
accepted on purpose and committed with it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from harness.matrix import load_matrix

REPO = Path(__file__).resolve().parent.parent
GATE_PASSES = {"within noise", "improvement"}


def test_smoke_run_passes_the_committed_baseline(
    smoke_run_dir: Path, run_bench: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    baseline = REPO / "reports" / "baselines" / "smoke.json"
    assert baseline.is_file(), "the smoke baseline must be committed (bench baseline accept)"
    proc = run_bench("compare", str(smoke_run_dir), "--json")
    data = json.loads(proc.stdout)
    verdicts = {c["cell_id"]: c["verdict"] for c in data["cells"]}
    expected = {c.cell_id for c in load_matrix("smoke").cells}
    assert set(verdicts) == expected
    assert set(verdicts.values()) <= GATE_PASSES, (data["summary"], verdicts)
    assert proc.returncode == 0, proc.stderr


def test_bench_all_ends_with_the_comparison_and_the_report(smoke_run_dir: Path) -> None:
    # The smoke fixture ran plain `bench all`, which compares and reports at its end,
    # with the committed baseline: the report names it and carries the delta plot.
    report = smoke_run_dir / "report" / "report.md"
    baseline_run = json.loads((REPO / "reports" / "baselines" / "smoke.json").read_text())["run_id"]
    assert f"Baseline: run `{baseline_run}`" in report.read_text()
    assert (smoke_run_dir / "report" / "plots" / "baseline_deltas.png").is_file()
