"""Matrix TOML parsing: the shipped profiles, cell ids, and errors that name file/field/value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.matrix import load_matrix

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = ("scratch", "feature-extract", "fine-tune", "full-fine-tune")


@pytest.fixture(autouse=True)
def _home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_HOME", str(REPO))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(text)
    return path


BASE = """
[tolerances]
accuracy_points = 1.0
throughput_relative = 0.1
[defaults]
image_size = 32
alpha = 0.35
weights = "w"
[[cells]]
datasets = ["a"]
strategies = ["scratch", "feature-extract"]
precisions = ["float32"]
seeds = [0, 1]
"""


def test_smoke_profile_is_three_targets_times_four_strategies() -> None:
    m = load_matrix("smoke")
    assert len(m.cells) == 12
    assert {c.dataset for c in m.cells} == {"synth-few", "synth-many", "synth-xray"}
    assert {c.strategy for c in m.cells} == set(EXPERIMENT)
    for c in m.cells:
        assert (c.image_size, c.alpha, c.precision) == (32, 0.35, "float32")
        assert c.weights == ("none" if c.strategy == "scratch" else "mnv2-synth-a035-32")
        assert c.cell_id == f"{c.dataset}/{c.strategy}/float32/s{c.seed}"
    assert m.tolerances.throughput_relative == 0.20 and m.tolerances.false_alarm_rate == 0.01
    assert (m.recording.noise_seeds, m.recording.repeats) == (4, 5)


def test_reference_profile_matches_the_experiment() -> None:
    m = load_matrix("reference")
    assert len(m.cells) == 12
    assert {c.dataset for c in m.cells} == {"birds-30", "cub-200", "chest-xray"}
    for c in m.cells:
        assert (c.image_size, c.batch_size, c.epochs, c.learning_rate) == (224, 32, 70, 1e-3)
        assert c.precision == "mixed_float16" and c.alpha == 1.0
        assert c.reduce_lr == (c.dataset == "birds-30")
        assert c.augmentation != "none"
        assert c.fine_tune_k == 140 and c.dense_units == 1024
    assert m.tolerances.throughput_relative == 0.10
    alt = load_matrix("reference-birds400")
    assert {c.dataset for c in alt.cells} == {"birds-30", "birds-400", "chest-xray"}


def test_throughput_profile_every_strategy_and_precision() -> None:
    m = load_matrix("throughput")
    assert {c.strategy for c in m.cells} == {
        "scratch", "feature-extract", "fine-tune", "full-fine-tune", "two-stage", "linear-probe"
    }  # fmt: skip
    assert {c.precision for c in m.cells} == {"float32", "mixed_float16", "mixed_bfloat16"}
    assert all(c.input == "synthetic" and c.steps_per_epoch for c in m.cells)
    assert all(c.skip_if_unsupported for c in m.cells if c.precision == "mixed_bfloat16")
    # random weights are visible in the ids, never hidden
    assert "synthetic-224/feature-extract-random/float32/s0" in {c.cell_id for c in m.cells}


def test_group_product_overrides_and_select(tmp_path: Path) -> None:
    m = load_matrix(str(write(tmp_path, BASE + "epochs = 5\n")))
    assert [c.cell_id for c in m.cells] == [
        "a/scratch/float32/s0", "a/scratch/float32/s1",
        "a/feature-extract/float32/s0", "a/feature-extract/float32/s1",
    ]  # fmt: skip
    assert all(c.epochs == 5 for c in m.cells)
    assert m.cells[0].weights == "none"  # scratch never claims a weights file
    assert [c.cell_id for c in m.select("*/s1")] == ["a/scratch/float32/s1",
                                                     "a/feature-extract/float32/s1"]  # fmt: skip
    assert len(m.select("feature,scratch/float32/s0")) == 3
    with pytest.raises(InputError, match="matches no cell"):
        m.select("nope")
    with pytest.raises(InputError, match="no cell 'x/y/z/s0'"):
        m.cell("x/y/z/s0")


def test_weights_none_labels_the_strategy(tmp_path: Path) -> None:
    m = load_matrix(str(write(tmp_path, BASE.replace('weights = "w"', 'weights = "none"'))))
    assert "a/feature-extract-random/float32/s0" in [c.cell_id for c in m.cells]


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (('precisions = ["float32"]', 'precisions = ["float8"]'), "precision: expected one of"),
        (('strategies = ["scratch",', 'strategies = ["scrach",'), "'scrach'"),
        (("image_size = 32", "image_size = 16"), "image_size: MobileNetV2 needs at least 32"),
        (("image_size = 32", 'image_size = "32"'), "defaults.image_size: expected int, got '32'"),
        (("alpha = 0.35", "alpah = 0.35"), "unknown field 'alpah'"),
        (("seeds = [0, 1]", "seeds = [0, 0]"), "already defined"),
        (("seeds = [0, 1]", "seeds = []"), "cells[0].seeds: expected a non-empty list"),
        (("throughput_relative = 0.1", "throughput_relative = 10"), "must be < 1"),
        (("accuracy_points = 1.0\n", ""), "tolerances.accuracy_points must be a number"),
        (("alpha = 0.35", 'dataset = "x"'), "'dataset' is a matrix axis"),
        (
            ("throughput_relative = 0.1", "throughput_relative = 0.1\nfalse_alarm_rate = 0.7"),
            "tolerances.false_alarm_rate must be in (0, 0.5) (a probability per run), got 0.7",
        ),
        (
            ("throughput_relative = 0.1", "throughput_relative = 0.1\nmin_compared = 2"),
            "tolerances.min_compared must be a fraction in [0, 1], got 2.0",
        ),
        (("[defaults]", "[baseline]\nnoise_seed = 3\n[defaults]"), "baseline: unknown field(s)"),
        (
            ("[defaults]", "[baseline]\nrepeats = 0\n[defaults]"),
            "baseline.repeats must be an integer in [1, 50], got 0",
        ),
    ],
)
def test_errors_name_file_field_and_value(
    tmp_path: Path, edit: tuple[str, str], needle: str
) -> None:
    path = write(tmp_path, BASE.replace(*edit))
    with pytest.raises(InputError) as info:
        load_matrix(str(path))
    msg = info.value.message
    assert needle in msg and str(path) in msg
    assert "\n" not in msg


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(InputError, match=r"no matrix file for profile 'nope'.*smoke"):
        load_matrix("nope")


def test_two_stage_needs_head_epochs_below_epochs(tmp_path: Path) -> None:
    text = BASE.replace('"feature-extract"]', '"two-stage"]') + "epochs = 3\nhead_epochs = 3\n"
    with pytest.raises(InputError, match="head_epochs: two-stage needs 0 < head_epochs < epochs"):
        load_matrix(str(write(tmp_path, text)))


SYNTH = 'input = "synthetic"\nnum_classes = 3\nbatch_size = 8\n'


@pytest.mark.parametrize(
    ("edit", "extra", "needle"),
    [
        (
            ('"feature-extract"]', '"fine-tune"]'),
            "fine_tune_k = 154\n",
            "fine_tune_k: fine-tune freezes the first K of the backbone's 154 layers",
        ),
        (('"feature-extract"]', '"fine-tune"]'), "fine_tune_k = 0\n", "1 <= fine_tune_k <= 153"),
        (("", ""), "epochs = 100000000000000000000\n", "epochs: expected at most 10000"),
        (("", ""), "inference_steps = 10000000000\n", "inference_steps: expected at most"),
        (
            ("", ""),
            SYNTH + "steps_per_epoch = 5\nepochs = 2\nwarmup_steps = 10\n",
            "warmup_steps: warmup_steps 10 leaves no train step to time: it trains 2 epoch(s) "
            "× 5 full batch(es) of 8",
        ),
        (
            ('"feature-extract"]', '"two-stage"]'),
            SYNTH + "steps_per_epoch = 5\nepochs = 3\nhead_epochs = 2\nwarmup_steps = 5\n",
            "its unfrozen stage trains 1 epoch(s) × 5 full batch(es) of 8 from 40 train "
            "images = 5 step(s); expected warmup_steps < 5",
        ),
    ],
    ids=["k-154", "k-0", "epochs-1e20", "inference-steps", "warmup-synthetic", "warmup-two-stage"],
)
def test_bad_run_lengths_are_caught_by_the_profile_check(
    tmp_path: Path, edit: tuple[str, str], extra: str, needle: str
) -> None:
    """Issue 18: each of these was caught late (in the cell) or never (1e20 epochs ran until
    killed); the value alone decides, so the profile check refuses it, naming it."""
    path = write(tmp_path, BASE.replace(*edit) + extra)
    with pytest.raises(InputError) as info:
        load_matrix(str(path))
    msg = info.value.message
    assert needle in msg and str(path) in msg and "\n" not in msg, msg
    assert "got " in msg  # echoes the bad value


def test_fine_tune_k_and_warmup_at_their_limits_are_accepted(tmp_path: Path) -> None:
    text = BASE.replace('"feature-extract"]', '"fine-tune", "two-stage"]') + SYNTH
    text += (
        "fine_tune_k = 153\nsteps_per_epoch = 5\nepochs = 3\nhead_epochs = 2\nwarmup_steps = 4\n"
    )
    m = load_matrix(str(write(tmp_path, text)))
    assert {c.fine_tune_k for c in m.cells} == {153}
    # scratch ignores fine_tune_k: a value for fine-tune cells in [defaults] does not stop it
    m = load_matrix(str(write(tmp_path, BASE + "fine_tune_k = 5000\n")))
    assert {c.strategy for c in m.cells} == {"scratch", "feature-extract"}
    for shipped in ("smoke", "reference", "reference-birds400", "throughput", "gpu-throughput"):
        assert load_matrix(shipped).cells


def test_bench_all_refuses_them_before_any_cell(tmp_path: Path) -> None:
    """The real CLI: exit 2, one line, no run folder (1e20 epochs used to run until killed)."""
    text = BASE.replace('weights = "w"', 'weights = "none"') + SYNTH  # runnable here
    profile = write(tmp_path, text + "epochs = 100000000000000000000\n")
    runs = tmp_path / "runs"
    argv = ["all", "--profile", str(profile), "--runs-dir", str(runs), "--run-id", "r"]
    env = {**os.environ, "BENCH_HOME": str(REPO), "BENCH_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", *argv],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "epochs: expected at most 10000" in proc.stderr
    assert "got 100000000000000000000" in proc.stderr and not runs.exists()
