r"""Transfer strategies: backbone + head + freeze policy + weights, one cell's model.

The design's strategy table, in code. Every model has the same front: a ``uint8`` image
input, ``Rescaling(1/127.5, offset=-1)`` (exactly ``mobilenet_v2.preprocess_input``,
mode "tf": ``x/127.5 - 1``) and the augmentation as Keras preprocessing layers (active
only in training), so the input pipeline only moves uint8 arrays and augmentation runs
on the device. Then the MobileNetV2 backbone (``include_top=False``; 154 layers at
every alpha and size) and the head; the output ``Dense`` is float32 under mixed precision.

| strategy        | weights    | backbone trains      | backbone call  | head                   |
|-----------------|------------|----------------------|----------------|------------------------|
| scratch         | random     | all 154 layers       | training=None  | GMP, softmax           |
| feature-extract | pretrained | none                 | training=False | GMP, Dense 1024, softmax |
| fine-tune       | pretrained | layers K.. (K=140)   | training=None* | GMP, softmax           |
| full-fine-tune  | pretrained | all                  | training=None  | GMP, softmax           |
| two-stage       | pretrained | 1: none, 2: all - BN | training=False | GMP, Dense 1024, softmax |
| linear-probe    | pretrained | none (cached feats)  | training=False | softmax on GMP features |

\* frozen BatchNorm layers run in inference mode whatever the call says: a Keras 3
BatchNormalization with ``trainable=False`` uses its moving statistics.

two-stage: stage 1 trains the head for ``head_epochs`` with the backbone frozen; stage 2
unfreezes every backbone layer except the BatchNormalization layers and recompiles with
Adam whose learning rate is ``learning_rate`` for the head and ``learning_rate ×
backbone_lr_factor`` for each backbone variable (per-variable factors in
:func:`harness.backend.adam`; the optimizer state starts fresh at stage 2). Its BatchNorm
layers stay frozen, hence in inference mode, in both stages, as the Keras transfer-learning
guide recommends, so unfreezing does not wipe the pretrained statistics.

Why ``trainable = False`` and not only ``training=False``: the backbone is called with
``training=False`` for the frozen strategies, but in Keras 3 a functional model propagates
the ``training`` flag of the outer call (``fit`` passes True) to every nested layer,
overriding that per-call value. What really keeps a BatchNormalization layer in inference
mode is ``trainable = False`` on the layer (tested in tests/test_strategies.py).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.matrix import STRATEGIES, CellSpec


@dataclass(frozen=True)
class Stage:
    """One fit() of a strategy: until which epoch, what is frozen, the learning rates."""

    name: str
    until_epoch: int
    backbone_trainable: str  # "none", "all", "from-k" or "all-but-bn"
    backbone_lr_factor: float = 1.0


@dataclass(frozen=True)
class Plan:
    """What a strategy does, independent of the Keras objects (used by tests and results)."""

    strategy: str
    pretrained: bool
    backbone_training_arg: bool | None  # the ``training=`` the backbone is called with
    head: tuple[str, ...]  # e.g. ("GlobalMaxPooling2D", "Dense(1024, relu)", "Dense(N, softmax)")
    stages: tuple[Stage, ...]
    cached_features: bool = False


def plan(cell: CellSpec) -> Plan:
    """The strategy table row for ``cell``."""
    s = cell.strategy
    if s not in STRATEGIES:
        raise InputError(f"unknown strategy {s!r} (known: {list(STRATEGIES)})")
    out = "Dense(N, softmax, float32)"
    hidden = (f"Dense({cell.dense_units}, relu)",) if cell.dense_units else ()
    gmp = "GlobalMaxPooling2D"
    e = cell.epochs
    if s == "scratch":
        return Plan(s, False, None, (gmp, out), (Stage("train", e, "all"),))
    if s == "feature-extract":
        return Plan(s, cell.pretrained, False, (gmp, *hidden, out), (Stage("train", e, "none"),))
    if s == "fine-tune":
        return Plan(s, cell.pretrained, None, (gmp, out), (Stage("train", e, "from-k"),))
    if s == "full-fine-tune":
        return Plan(s, cell.pretrained, None, (gmp, out), (Stage("train", e, "all"),))
    if s == "two-stage":
        return Plan(
            s,
            cell.pretrained,
            False,
            (gmp, *hidden, out),
            (
                Stage("head", cell.head_epochs, "none"),
                Stage("unfrozen", e, "all-but-bn", cell.backbone_lr_factor),
            ),
        )
    # linear-probe: a softmax classifier on cached frozen features
    return Plan(s, cell.pretrained, False, (gmp, out), (Stage("train", e, "none"),), True)


@dataclass
class Built:
    """The Keras objects of one cell (mutable: stages flip ``trainable``)."""

    cell: CellSpec
    plan: Plan
    model: Any  # keras.Model: uint8 images -> class probabilities
    backbone: Any  # the MobileNetV2 functional model inside ``model``
    head_layers: list[Any]
    num_classes: int
    weights_note: str
    bn_layers: int = 0  # backbone BatchNormalization layers given ``cell.bn_momentum``
    feature_model: Any = None  # linear-probe: uint8 images -> pooled features
    classifier: Any = None  # linear-probe: features -> probabilities
    notes: list[str] = field(default_factory=list)


def augmentation_layers(kind: str, seed: int) -> list[Any]:
    """Keras preprocessing layers for an augmentation preset (active only when training)."""
    import keras

    if kind == "none":
        return []
    layers = [keras.layers.RandomFlip("horizontal", seed=seed, name="aug_flip")]
    if kind == "standard":
        layers += [
            keras.layers.RandomRotation(0.1, seed=seed + 1, name="aug_rotate"),
            keras.layers.RandomZoom(0.1, seed=seed + 2, name="aug_zoom"),
        ]
    return layers


def build(cell: CellSpec, num_classes: int, weights_file: Path | None, weights_note: str) -> Built:
    """Build the cell's model (uncompiled) and apply the first stage's freeze policy.

    ``weights_file`` is the verified backbone weights file, or None for random init
    (scratch, ``weights = "none"``, or a dry run without the file — ``weights_note`` says which).
    """
    import keras

    p = plan(cell)
    size = cell.image_size
    backbone = keras.applications.MobileNetV2(
        input_shape=(size, size, 3),
        alpha=cell.alpha,
        include_top=False,
        weights=str(weights_file) if weights_file else None,
    )
    bn_layers = set_bn_momentum(backbone, cell.bn_momentum)
    n_layers = len(backbone.layers)
    if cell.strategy == "fine-tune" and not 0 < cell.fine_tune_k < n_layers:
        raise InputError(
            f"{cell.cell_id}: fine_tune_k must be between 1 and {n_layers - 1} "
            f"(the backbone has {n_layers} layers), got {cell.fine_tune_k}"
        )
    inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(inputs)
    built_head: list[Any] = []
    if p.cached_features:
        feats = keras.layers.GlobalMaxPooling2D(name="gmp")(backbone(x, training=False))
        feature_model = keras.Model(inputs, feats, name="feature_extractor")
        f_in = keras.Input((feats.shape[-1],), name="features")
        out_layer = keras.layers.Dense(
            num_classes, activation="softmax", dtype="float32", name="classifier"
        )
        classifier = keras.Model(f_in, out_layer(f_in), name="linear_probe")
        model = keras.Model(inputs, out_layer(feats), name=f"{cell.strategy}")
        built = Built(
            cell, p, model, backbone, [out_layer], num_classes, weights_note, bn_layers,
            feature_model=feature_model, classifier=classifier,
        )  # fmt: skip
        set_stage(built, p.stages[0])
        return built
    for layer in augmentation_layers(cell.augmentation, cell.seed):
        x = layer(x)
    x = backbone(x, training=p.backbone_training_arg)
    gmp = keras.layers.GlobalMaxPooling2D(name="gmp")
    x = gmp(x)
    built_head.append(gmp)
    if cell.strategy in ("feature-extract", "two-stage") and cell.dense_units:
        dense = keras.layers.Dense(cell.dense_units, activation="relu", name="head_dense")
        x = dense(x)
        built_head.append(dense)
    out_layer = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="out")
    outputs = out_layer(x)
    built_head.append(out_layer)
    model = keras.Model(inputs, outputs, name=cell.strategy)
    built = Built(cell, p, model, backbone, built_head, num_classes, weights_note, bn_layers)
    set_stage(built, p.stages[0])
    return built


def set_bn_momentum(backbone: Any, momentum: float) -> int:
    """Give every BatchNormalization layer of ``backbone`` this moving-statistics momentum.

    Keras builds MobileNetV2 with momentum 0.999: the moving mean and variance then keep
    ``0.999**steps`` of their initial values, so after a few hundred steps (a short run)
    a model trained from scratch is evaluated with near-initial statistics and scores at
    chance. The momentum only matters where a BatchNorm layer trains (frozen layers use
    their statistics as they are). Returns the number of layers set.
    """
    import keras

    layers = [
        layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    for layer in layers:
        layer.momentum = float(momentum)
    return len(layers)


def set_stage(built: Built, stage: Stage) -> None:
    """Apply a stage's freeze policy to the backbone."""
    backbone = built.backbone
    if stage.backbone_trainable == "all":
        backbone.trainable = True
    elif stage.backbone_trainable == "none":
        backbone.trainable = False
    elif stage.backbone_trainable == "all-but-bn":
        import keras

        backbone.trainable = True
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    else:  # from-k: the first K layers frozen, the rest trainable
        backbone.trainable = True
        for i, layer in enumerate(backbone.layers):
            layer.trainable = i >= built.cell.fine_tune_k


def layer_counts(built: Built) -> dict[str, int]:
    """Backbone layers frozen / trainable (by index, as the experiment counts K), head layers.

    ``trainable`` = trainable backbone layers + head layers with weights.
    """
    bb = built.backbone.layers
    frozen = sum(1 for layer in bb if not (layer.trainable and built.backbone.trainable))
    head = sum(1 for layer in built.head_layers if layer.weights)
    params_trainable = sum(_size(w) for w in built.model.trainable_weights)
    params_frozen = sum(_size(w) for w in built.model.non_trainable_weights)
    return {
        "backbone_layers": len(bb),
        "backbone_frozen": frozen,
        "backbone_trainable": len(bb) - frozen,
        "head_layers": head,
        "trainable_layers": len(bb) - frozen + head,
        "frozen_layers": frozen,
        "trainable_params": params_trainable,
        "frozen_params": params_frozen,
    }


def _size(w: Any) -> int:
    return math.prod(int(d) for d in w.shape)


def compile_stage(built: Built, stage: Stage, *, jit_compile: bool = False) -> Any:
    """Compile for one stage: Adam, sparse categorical cross-entropy, accuracy.

    Returns the compiled model's optimizer: a :func:`harness.backend.adam`, or under
    ``mixed_float16`` the ``LossScaleOptimizer`` Keras wraps around it.
    """
    from harness import backend

    multipliers: dict[str, float] = {}
    if stage.backbone_lr_factor != 1.0:
        multipliers = {w.path: stage.backbone_lr_factor for w in built.backbone.trainable_weights}
    optimizer = backend.adam(built.cell.learning_rate, lr_multipliers=multipliers)
    target = built.classifier if built.plan.cached_features else built.model
    target.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return target.optimizer


def describe(built: Built) -> dict[str, Any]:
    """The strategy as recorded in a result's ``extra``: plan, head, counts, weights."""
    p = built.plan
    return {
        "pretrained": p.pretrained,
        "weights_note": built.weights_note,
        "backbone_training_arg": p.backbone_training_arg,
        "head": list(p.head),
        "stages": [dataclasses.asdict(s) for s in p.stages],
        "cached_features": p.cached_features,
        "batchnorm": {"momentum": built.cell.bn_momentum, "layers": built.bn_layers},
    }
