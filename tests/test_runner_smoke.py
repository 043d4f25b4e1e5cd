"""The smoke matrix from the CLI (``smoke_run_dir``, run once per session) and what it shows.

- every cell runs to completion and every result file validates against its schema;
- every pretrained cell learned, scratch beats chance on synth-xray by 20 points (not on the
  shape targets: a strict xfail, README "Not done");
- pretrained weights are really used: on the similar-domain target (synth-few) the
  pretrained feature extractor beats the same frozen head on a random backbone by a wide
  margin, and on the many-class target (synth-many) it is far above chance — the
  published experiment's 4 % frozen-backbone result must not happen here.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import results, runfolder
from harness.analysis import findings
from harness.matrix import load_matrix

REPO = Path(__file__).resolve().parent.parent
Run = Callable[..., subprocess.CompletedProcess[str]]
ENV_KEYS = {"harness_version", "git_commit", "backend", "cpu", "gpu", "manifest_digest"}


def cell(run_dir: Path, cell_id: str) -> results.CellResult:
    return runfolder.read_cell(run_dir / "cells" / runfolder.cell_filename(cell_id))


@pytest.mark.slow
def test_smoke_runs_every_cell_and_results_validate(smoke_run_dir: Path) -> None:
    matrix = load_matrix(str(REPO / "benchmarks" / "smoke.toml"))
    info = runfolder.read_run(smoke_run_dir)
    assert info.profile == "smoke" and info.finished_at
    assert info.cell_ids == tuple(c.cell_id for c in matrix.cells)
    # every tolerance the gate uses, as the profile sets it (not the gate's defaults)
    assert info.tolerances == {
        "accuracy_points": 2.0, "throughput_relative": 0.2, "false_alarm_rate": 0.01,
        "min_compared": 1.0,
    }  # fmt: skip
    assert set(info.environment) >= ENV_KEYS
    assert info.manifest_digest == info.environment["manifest_digest"]
    assert len(info.matrix["cells"]) == 12
    cells = runfolder.read_cells(smoke_run_dir)
    assert [c.cell_id for c in cells] == sorted(info.cell_ids)
    failed = {c.cell_id: c.error for c in cells if not c.ok}
    assert not failed, failed
    for c in cells:
        spec = matrix.cell(c.cell_id)
        assert len(c.history) == spec.epochs
        assert all(h.val_accuracy is not None and h.seconds > 0 for h in c.history)
        assert c.test_accuracy is not None and 0 <= c.test_accuracy <= 1
        assert c.train_throughput and c.train_throughput.images_per_s > 0
        assert len(c.train_throughput.step_series) == c.train_throughput.step_seconds.n
        assert c.train_throughput.warmup_steps == spec.warmup_steps
        assert c.inference_throughput and c.inference_throughput.batch_size == 32
        assert c.peak_memory_bytes and c.peak_memory_kind
        assert c.weights_digest and len(c.weights_digest) == 64
        pretrained = c.strategy != "scratch"
        assert ("mnv2-synth-a035-32" in c.config["strategy_plan"]["weights_note"]) == pretrained
        assert c.config["effective"]["train_examples"] > 0


@pytest.mark.slow
def test_pretrained_weights_are_really_used(
    smoke_run_dir: Path, run_bench: Run, tmp_path: Path
) -> None:
    # The control: the smoke feature-extract cell on synth-few, but a random backbone.
    smoke = (REPO / "benchmarks" / "smoke.toml").read_text()
    control = smoke[: smoke.index("[[cells]]")] + (
        '[[cells]]\ndatasets = ["synth-few"]\nstrategies = ["feature-extract"]\n'
        'precisions = ["float32"]\nseeds = [0]\nweights = "none"\n'
    )
    profile = tmp_path / "control.toml"
    profile.write_text(control)
    cid = "synth-few/feature-extract-random/float32/s0"
    proc = run_bench(
        "run", cid, "--profile", str(profile), "--runs-dir", str(tmp_path), "--run-id", "c"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    random_fe = cell(tmp_path / "c", cid)
    pre_fe = cell(smoke_run_dir, "synth-few/feature-extract/float32/s0")
    assert random_fe.config["strategy_plan"]["pretrained"] is False
    assert pre_fe.config["strategy_plan"]["pretrained"] is True
    assert random_fe.trainable_layers == pre_fe.trainable_layers  # the same frozen head
    assert pre_fe.best_val_accuracy is not None and random_fe.best_val_accuracy is not None
    assert pre_fe.best_val_accuracy >= random_fe.best_val_accuracy + 0.25, (
        pre_fe.best_val_accuracy,
        random_fe.best_val_accuracy,
    )
    many = cell(smoke_run_dir, "synth-many/feature-extract/float32/s0")
    chance = 1 / many.config["effective"].get("num_classes", 48)
    assert many.best_val_accuracy is not None and many.best_val_accuracy >= 10 * chance, (
        many.best_val_accuracy
    )


SCRATCH_MARGIN_POINTS = 20.0  # measured best val 84.0-91.5 % on synth-xray, seeds 0-2 (chance 50 %)


def _did_not_learn(c: results.CellResult) -> bool:
    check = findings.chance_check(c)
    assert check is not None, f"{c.cell_id}: no class count or val size to judge chance by"
    return not check.learned


@pytest.mark.slow
def test_every_pretrained_cell_and_scratch_on_xray_beat_chance(smoke_run_dir: Path) -> None:
    """Every strategy with pretrained weights learned on every target (findings' binomial
    bar), and scratch on the 2-class x-ray target beats chance by a stated margin: 20 points
    (10 epochs at 1e-2 with BatchNorm momentum 0.9)."""
    cells = runfolder.read_cells(smoke_run_dir)
    idle = [c.cell_id for c in cells if c.strategy != "scratch" and _did_not_learn(c)]
    assert not idle, idle
    xray = cell(smoke_run_dir, "synth-xray/scratch/float32/s0")
    chance = 1 / xray.config["effective"]["num_classes"]
    assert xray.best_val_accuracy is not None
    margin = 100 * (xray.best_val_accuracy - chance)
    assert margin >= SCRATCH_MARGIN_POINTS, f"synth-xray scratch: {margin:.1f} points over chance"


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="known limit (README, Not done): MobileNetV2 from scratch at 32 px does not learn "
    "the shape targets in a CI budget; when it does, this test fails: update the README",
)
def test_scratch_learns_the_shape_targets(smoke_run_dir: Path) -> None:
    for target in ("synth-few", "synth-many"):
        assert not _did_not_learn(cell(smoke_run_dir, f"{target}/scratch/float32/s0")), target
