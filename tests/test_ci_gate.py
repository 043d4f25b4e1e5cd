"""CI gates itself: the session's real smoke run against the committed smoke baselines.

``reports/baselines/smoke/<key>.json`` are accepted explicitly (``bench baseline record`` /
``accept``), one per reproducibility key. On a machine of a committed key the smoke run must
reproduce it bit for bit (exact tier: every cell ``identical``); elsewhere it falls to the
statistical tier and must stay within calibrated noise. When a change moves a smoke result,
or changes a cell's configuration so it no longer compares, this test fails until the
change is fixed or a new baseline is recorded on purpose and committed with it.

Throughput is shown, not gated here (``--accuracy-only``): a test suite is no place to
measure speed (the nightly job and ``bench ab`` are).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from harness import runfolder
from harness.analysis import baseline, reprokey
from harness.matrix import load_matrix

REPO = Path(__file__).resolve().parent.parent
GATE_PASSES = {"identical", "within noise", "improvement"}


def test_smoke_run_passes_the_committed_baseline(
    smoke_run_dir: Path, run_bench: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    stored = sorted((REPO / "reports" / "baselines" / "smoke").glob("*.json"))
    assert stored, "the smoke baseline must be committed (bench baseline record)"
    proc = run_bench("compare", str(smoke_run_dir), "--json", "--accuracy-only")
    data = json.loads(proc.stdout)
    verdicts = {c["cell_id"]: c["verdict"] for c in data["cells"]}
    expected = {c.cell_id for c in load_matrix("smoke").cells}
    assert set(verdicts) == expected
    assert set(verdicts.values()) <= GATE_PASSES, (data["summary"], verdicts)
    assert proc.returncode == 0, proc.stderr
    # On a committed key the exact tier applies, and then every cell reproduced.
    key = reprokey.key_id(reprokey.run_key(runfolder.read_run(smoke_run_dir).environment))
    if any(p.stem == key for p in stored):
        assert data["tier"] == "exact" and set(verdicts.values()) == {"identical"}, data["summary"]
    else:
        assert data["tier"] == "statistical" and "no baseline for this run key" in data["selection"]


def test_bench_all_ends_with_the_comparison_and_the_report(smoke_run_dir: Path) -> None:
    # The smoke fixture ran plain `bench all`, which compares and reports at its end,
    # with the committed baseline it selects: the report names it and carries the plot.
    report = smoke_run_dir / "report" / "report.md"
    chosen = baseline.choose("smoke", runfolder.read_run(smoke_run_dir).environment)
    assert chosen is not None
    assert f"Baseline: run `{chosen.baseline.run_id}`" in report.read_text()
    assert (smoke_run_dir / "report" / "plots" / "baseline_deltas.png").is_file()
