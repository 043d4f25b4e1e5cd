"""Pretrain a small MobileNetV2 backbone on a synthetic source, so smoke runs transfer offline.

The model is ``keras.applications.MobileNetV2(include_top=False, weights=None)`` plus
GlobalAveragePooling2D and a softmax Dense layer, trained with light augmentation on the
prepared cache of the source dataset. Only the **backbone's** weights are saved
(``backbone.save_weights``), so ``MobileNetV2(..., weights=PATH)`` loads them. Next to the
weights goes a versioned JSON sidecar with the training config, the accuracies and the digest
of the prepared data it was trained on.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness import __version__, jsonio
from harness.datasets.hashing import hash_file
from harness.errors import InputError

SIDECAR_KIND = "transfer-bench.pretrain"
SIDECAR_SCHEMA = 1
WEIGHTS_SUFFIX = ".weights.h5"


@dataclass(frozen=True)
class PretrainConfig:
    """What to train: the source dataset, the architecture and the optimisation settings."""

    dataset: str = "synth-source"
    image_size: int = 32
    alpha: float = 0.35
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    bn_momentum: float = 0.9  # BatchNorm moving statistics (Keras' MobileNetV2: 0.999)
    seed: int = 0
    limit: int | None = None  # use the first N images of each split only (quick checks, tests)
    run_eagerly: bool = False  # no graph tracing: slower steps, far quicker tiny runs

    def __post_init__(self) -> None:
        for field in ("image_size", "epochs", "batch_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"pretrain: {field} must be an integer >= 1, got {value!r}")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"pretrain: --limit must be >= 1, got {self.limit!r}")
        if not self.learning_rate > 0:
            raise InputError(f"pretrain: learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0 <= self.bn_momentum < 1:
            raise InputError(f"pretrain: bn_momentum must be in [0, 1), got {self.bn_momentum!r}")


@dataclass(frozen=True)
class PretrainResult:
    """Where the weights went, their hash and size, and how well the source was learned."""

    weights: Path
    sidecar: Path
    sha256: str
    size: int
    train_accuracy: float
    val_accuracy: float
    test_accuracy: float | None
    seconds: float


def sidecar_path(weights: Path) -> Path:
    """``foo.weights.h5`` -> ``foo.pretrain.json``."""
    name = weights.name.removesuffix(WEIGHTS_SUFFIX)
    return weights.with_name(f"{name}.pretrain.json")


def build_backbone(image_size: int, alpha: float) -> Any:
    """The headless MobileNetV2 whose weights are shipped."""
    import keras

    return keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3), alpha=alpha, include_top=False, weights=None
    )


def build_model(config: PretrainConfig, num_classes: int) -> tuple[Any, Any]:
    """(classifier, backbone): augmentation + preprocess_input + backbone + GAP + softmax.

    Every BatchNorm gets ``config.bn_momentum``: with Keras' 0.999 the moving statistics lag
    the training so far that a 20-epoch run scored chance (2.5 %) in inference mode while
    it fitted 20 % of the training set, and the saved backbone was useless frozen.
    """
    import keras

    from harness.cell.strategies import set_bn_momentum

    backbone = build_backbone(config.image_size, config.alpha)
    set_bn_momentum(backbone, config.bn_momentum)
    inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
    x = keras.layers.RandomFlip("horizontal", seed=config.seed)(inputs)
    x = keras.layers.RandomTranslation(0.08, 0.08, fill_mode="reflect", seed=config.seed)(x)
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess_input")(x)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="pretrain"), backbone


def load_source(config: PretrainConfig) -> tuple[dict[str, Any], str, int]:
    """The prepared splits (generated on demand for synthetic sets), digest and class count."""
    from harness.datasets.loader import open_split
    from harness.datasets.prepare import ensure_prepared

    ensure_prepared(config.dataset, config.image_size)
    splits = {}
    for split in ("train", "val", "test"):
        try:
            splits[split] = open_split(config.dataset, split, config.image_size)
        except InputError:
            if split == "train":
                raise
    if "val" not in splits:
        raise InputError(f"pretrain: dataset {config.dataset!r} has no 'val' split")
    train = splits["train"]
    return splits, train.digest, train.num_classes


def _arrays(split: Any, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    n = len(split) if limit is None else min(limit, len(split))
    return np.asarray(split.images[:n], dtype=np.float32), np.asarray(split.labels[:n])


def check_out(out: Path) -> None:
    """Keras saves weights only to ``*.weights.h5``: refuse another name before training."""
    if not Path(out).name.endswith(WEIGHTS_SUFFIX):
        raise InputError(f"pretrain: --out must end with {WEIGHTS_SUFFIX!r}, got {str(out)!r}")


def save_backbone(backbone: Any, out: Path) -> None:
    """``backbone.save_weights`` to a temporary name in the same folder, then rename."""
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=WEIGHTS_SUFFIX, dir=out.parent)
    os.close(fd)
    try:
        Path(tmp).unlink()  # keras refuses to overwrite without asking
        backbone.save_weights(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)


def pretrain(config: PretrainConfig, out: Path, *, verbose: int = 2) -> PretrainResult:
    """Train on ``config.dataset``, save the backbone weights to ``out`` plus the sidecar."""
    import keras

    out = Path(out)
    check_out(out)
    started = time.perf_counter()
    splits, digest, num_classes = load_source(config)
    x_train, y_train = _arrays(splits["train"], config.limit)
    x_val, y_val = _arrays(splits["val"], config.limit)

    keras.utils.set_random_seed(config.seed)
    model, backbone = build_model(config, num_classes)
    steps = config.epochs * -(-len(x_train) // config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        run_eagerly=config.run_eagerly,
    )
    history = model.fit(
        x_train,
        y_train,
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation_data=(x_val, y_val),
        shuffle=True,
        verbose=verbose,
    )
    train_acc = float(model.evaluate(x_train, y_train, batch_size=256, verbose=0)[1])
    val_acc = float(model.evaluate(x_val, y_val, batch_size=256, verbose=0)[1])
    test_acc = None
    if "test" in splits:
        x_test, y_test = _arrays(splits["test"], config.limit)
        test_acc = float(model.evaluate(x_test, y_test, batch_size=256, verbose=0)[1])

    save_backbone(backbone, out)
    written = hash_file(out)
    sha, size = written.sha256, written.size
    seconds = time.perf_counter() - started
    sidecar = sidecar_path(out)
    jsonio.write_json(
        sidecar,
        {
            "harness_version": __version__,
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "config": asdict(config),
            "architecture": {
                "model": "mobilenet_v2",
                "alpha": config.alpha,
                "input_size": config.image_size,
                "include_top": False,
            },
            "dataset": {"name": config.dataset, "prepared_digest": digest},
            "train_images": len(x_train),
            "accuracy": {"train": train_acc, "val": val_acc, "test": test_acc},
            "history": {k: [round(float(v), 6) for v in vs] for k, vs in history.history.items()},
            "weights": {"file": out.name, "sha256": sha, "size": size},
            "seconds": round(seconds, 1),
        },
        kind=SIDECAR_KIND,
        schema=SIDECAR_SCHEMA,
    )
    return PretrainResult(out, sidecar, sha, size, train_acc, val_acc, test_acc, seconds)
