"""Strategies: every reference cell's model matches the design's table and the experiment.

Models are built at full size (224 px, alpha 1.0, the cell's class count) with random
weights and compiled, without training steps. Behaviour that needs steps (frozen
BatchNorm in inference mode, the per-variable learning rate, the fused Adam) is checked
on small models.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from harness import backend
from harness.cell import strategies
from harness.matrix import BACKBONE_LAYERS, CellSpec, load_matrix

REPO = Path(__file__).resolve().parent.parent
IMAGENET = "mobilenet_v2_imagenet_1.0_224_no_top"
CLASSES = {"birds-30": 30, "cub-200": 200, "chest-xray": 2}


@pytest.fixture
def mixed_policy() -> Iterator[None]:
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    yield
    keras.mixed_precision.set_dtype_policy("float32")
    keras.backend.clear_session()


def test_reference_cells_match_the_strategy_table(
    monkeypatch: pytest.MonkeyPatch, mixed_policy: None
) -> None:
    monkeypatch.setenv("BENCH_HOME", str(REPO))
    matrix = load_matrix("reference")
    assert len(matrix.cells) == 12
    for cell in matrix.cells:
        keras.backend.clear_session()  # (this also resets the global dtype policy)
        keras.mixed_precision.set_dtype_policy(cell.precision)
        n = CLASSES[cell.dataset]
        built = strategies.build(cell, n, None, "random (test)")
        counts = strategies.layer_counts(built)
        assert counts["backbone_layers"] == BACKBONE_LAYERS == 154, cell.cell_id
        frozen, head = counts["backbone_frozen"], [type(h).__name__ for h in built.head_layers]
        if cell.strategy == "scratch" or cell.strategy == "full-fine-tune":
            assert frozen == 0 and counts["trainable_layers"] == 155
            assert head == ["GlobalMaxPooling2D", "Dense"]
        elif cell.strategy == "feature-extract":
            assert frozen == 154 and counts["trainable_layers"] == 2
            assert head == ["GlobalMaxPooling2D", "Dense", "Dense"]
            assert built.head_layers[1].units == 1024
            assert built.head_layers[1].get_config()["activation"] == "relu"
            # only the head's kernels and biases train
            assert len(built.model.trainable_weights) == 4
        elif cell.strategy == "fine-tune":
            assert frozen == 140 and counts["backbone_trainable"] == 14
            assert all(not layer.trainable for layer in built.backbone.layers[:140])
            assert all(layer.trainable for layer in built.backbone.layers[140:])
            assert head == ["GlobalMaxPooling2D", "Dense"]
        out = built.head_layers[-1]
        assert out.units == n and out.get_config()["activation"] == "softmax"
        assert out.dtype_policy.compute_dtype == "float32"  # output float32 under mixed
        assert built.backbone.get_layer("Conv1").dtype_policy.compute_dtype == "float16"
        assert built.model.input.dtype == "uint8"
        assert built.model.output.shape[-1] == n
        assert built.plan.backbone_training_arg is (
            False if cell.strategy == "feature-extract" else None
        )
        assert built.plan.pretrained == cell.pretrained == (cell.strategy != "scratch")
        assert cell.weights == ("none" if cell.strategy == "scratch" else IMAGENET)
        opt = strategies.compile_stage(built, built.plan.stages[0])
        model = built.model
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        inner = model.optimizer.inner_optimizer
        assert isinstance(inner, keras.optimizers.Adam) and opt is model.optimizer
        assert float(keras.ops.convert_to_numpy(inner.learning_rate)) == pytest.approx(1e-3)
        assert model.loss == "sparse_categorical_crossentropy"
        aug = [layer.name for layer in model.layers if layer.name.startswith("aug_")]
        assert aug == ["aug_flip", "aug_rotate", "aug_zoom"]


def small(strategy: str, **kw: object) -> CellSpec:
    base = dict(image_size=32, alpha=0.35, weights="w", augmentation="none", epochs=3)
    return CellSpec(dataset="d", strategy=strategy, precision="float32", seed=0, **{**base, **kw})


def bn_moving_means(model: keras.Model) -> list[np.ndarray]:
    return [
        keras.ops.convert_to_numpy(layer.moving_mean).copy()
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


@pytest.mark.parametrize("strategy", ["feature-extract", "fine-tune", "two-stage"])
def test_frozen_batchnorm_runs_in_inference_mode(strategy: str) -> None:
    keras.utils.set_random_seed(0)
    built = strategies.build(small(strategy), 3, None, "random")
    before = bn_moving_means(built.backbone)
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    built.model(x, training=True)
    after = bn_moving_means(built.backbone)
    changed = [not np.array_equal(a, b) for a, b in zip(before, after, strict=True)]
    if strategy == "fine-tune":  # BN layers before K=140 frozen, the later ones update
        bns = [i for i, layer in enumerate(built.backbone.layers)
               if isinstance(layer, keras.layers.BatchNormalization)]  # fmt: skip
        assert changed == [i >= 140 for i in bns]
        assert any(changed)
    else:
        assert not any(changed)
    if strategy == "two-stage":  # unfrozen stage 2: BN still in inference mode
        strategies.set_stage(built, built.plan.stages[1])
        assert built.backbone.trainable
        built.model(x, training=True)
        assert all(
            np.array_equal(a, b)
            for a, b in zip(after, bn_moving_means(built.backbone), strict=True)
        )


def test_two_stage_gives_the_backbone_a_lower_learning_rate() -> None:
    keras.utils.set_random_seed(0)
    cell = small("two-stage", backbone_lr_factor=0.1, head_epochs=1)
    built = strategies.build(cell, 3, None, "random")
    stage2 = built.plan.stages[1]
    strategies.set_stage(built, stage2)
    opt = strategies.compile_stage(built, stage2)
    bb_paths = {w.path for w in built.backbone.trainable_weights}
    assert bb_paths and set(opt.lr_multipliers) == bb_paths
    assert set(opt.lr_multipliers.values()) == {0.1}
    # Adam's first step moves a weight by lr·factor·g/(|g|+ε) ≈ lr·factor for a unit gradient.
    weights = built.model.trainable_weights
    before = [keras.ops.convert_to_numpy(w).copy() for w in weights]
    opt.apply([keras.ops.ones_like(w) for w in weights], weights)
    for w, b in zip(weights, before, strict=True):
        moved = np.abs(keras.ops.convert_to_numpy(w) - b).max()
        want = 1e-4 if w.path in bb_paths else 1e-3
        assert moved == pytest.approx(want, rel=1e-3), w.path
    assert any(w.path not in bb_paths for w in weights)  # the head is in there too


def test_fused_adam_matches_keras_adam() -> None:
    """The harness's Adam (fused on TensorFlow) follows keras.optimizers.Adam step by step."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(64, 8)).astype("float32"), rng.integers(0, 3, 64)

    def train(opt: keras.optimizers.Optimizer) -> list[np.ndarray]:
        keras.utils.set_random_seed(3)
        inp = keras.Input((8,))
        model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(
            keras.layers.Dense(16, activation="relu")(inp)))  # fmt: skip
        model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
        for _ in range(5):
            model.train_on_batch(x, y)
        return [keras.ops.convert_to_numpy(w) for w in model.weights]

    ours, ref = train(backend.adam(1e-2)), train(keras.optimizers.Adam(1e-2))
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_preprocess_layer_is_mobilenet_v2_preprocess_input() -> None:
    built = strategies.build(small("scratch"), 3, None, "random")
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    ours = keras.ops.convert_to_numpy(built.model.get_layer("preprocess")(x))
    ref = keras.applications.mobilenet_v2.preprocess_input(x.astype("float32"))
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_linear_probe_shares_the_classifier_with_the_image_model() -> None:
    built = strategies.build(small("linear-probe"), 4, None, "random")
    assert built.plan.cached_features and built.feature_model is not None
    assert built.classifier.layers[-1] is built.model.layers[-1]
    assert not built.backbone.trainable
    assert built.feature_model.output.shape[-1] == built.classifier.input.shape[-1]


def test_fine_tune_k_out_of_range_is_an_input_error() -> None:
    from harness.errors import InputError

    with pytest.raises(InputError, match=r"fine_tune_k must be between 1 and 153.*got 154"):
        strategies.build(small("fine-tune", fine_tune_k=154), 3, None, "random")


def test_bn_momentum_reaches_every_backbone_batchnorm_and_the_record() -> None:
    keras.utils.set_random_seed(0)
    built = strategies.build(small("scratch", bn_momentum=0.9), 3, None, "random")
    bns = [layer for layer in built.backbone.layers
           if isinstance(layer, keras.layers.BatchNormalization)]  # fmt: skip
    assert len(bns) == 52 and {layer.momentum for layer in bns} == {0.9}
    assert strategies.describe(built)["batchnorm"] == {"momentum": 0.9, "layers": 52}
    assert small("scratch", bn_momentum=0.9).to_dict()["bn_momentum"] == 0.9  # resolved config


def test_bn_momentum_sets_how_far_moving_statistics_move_in_a_training_step() -> None:
    """One training call moves bn_Conv1's moving mean by (1 - momentum) × (batch mean - it)."""
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    moved = {}
    for momentum in (0.999, 0.5):
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        built = strategies.build(small("scratch", bn_momentum=momentum), 3, None, "random")
        layer = built.backbone.get_layer("bn_Conv1")
        before = keras.ops.convert_to_numpy(layer.moving_mean).copy()
        built.model(x, training=True)
        moved[momentum] = keras.ops.convert_to_numpy(layer.moving_mean) - before
    assert np.abs(moved[0.999]).max() > 0
    np.testing.assert_allclose(moved[0.5], moved[0.999] * 500, rtol=1e-3, atol=1e-7)


def test_bn_momentum_is_validated_in_the_matrix() -> None:
    from harness.errors import InputError
    from harness.matrix import parse_matrix

    data = {
        "tolerances": {"accuracy_points": 1, "throughput_relative": 0.1},
        "defaults": {"bn_momentum": 1.0},
        "cells": [{"datasets": ["d"], "strategies": ["scratch"], "precisions": ["float32"],
                   "seeds": [0]}],
    }  # fmt: skip
    with pytest.raises(InputError, match=r"bn_momentum: expected 0 <= momentum < 1, got 1\.0"):
        parse_matrix(data, path=Path("m.toml"), profile="m")
    data["defaults"]["bn_momentum"] = 0.9
    (cell,) = parse_matrix(data, path=Path("m.toml"), profile="m").cells
    assert cell.bn_momentum == 0.9
