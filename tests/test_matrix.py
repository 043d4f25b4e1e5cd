"""Matrix TOML parsing: the shipped profiles, cell ids, and errors that name file/field/value."""

from __future__ import annotations

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
    assert m.tolerances.throughput_relative == 0.5


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
