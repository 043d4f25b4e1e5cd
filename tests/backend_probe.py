"""Checks of the backend contract, run in a process of their own: ``python tests/backend_probe.py``.

The backend is ``$KERAS_BACKEND`` (fixed when Keras is imported, hence one process per
backend); the harness's own code builds and trains tiny models (32 px, MobileNetV2 alpha
0.35, random weights, a couple of steps) and this prints one JSON object of findings for
tests/test_backend_contract.py to assert on:

- ``precision``: under mixed_bfloat16 / mixed_float16 the backbone computes in the low
  precision and the output layer (and the model's output) stays float32;
- ``frozen_bn``: after training fine-tune (K = 140), every frozen BatchNormalization
  layer's moving statistics are unchanged (inference mode) and the trainable ones' moved
  (so the check can fail);
- ``lr_scaling``: one Adam step through the compiled training step with per-variable
  learning-rate factors: Adam's first update is ``lr × factor · g / (|g| + ε)``, so no
  weight moves by more than ``lr × factor`` and the ones with the largest gradients move
  by that much: each variable's largest step, over ``lr``, is its factor;
- ``timing``: at every ``on_train_batch_end`` after :class:`harness.cell.timing.StepTimer`'s,
  whether the backend still had work queued for the model (JAX: ``is_ready()`` of every
  array of the live state);
- ``memory``: what :func:`harness.backend.peak_memory` reports.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras
import numpy as np

from harness import backend
from harness.cell import strategies, timing
from harness.matrix import CellSpec

SIZE, BATCH, CLASSES = 32, 8, 3


def cell(strategy: str, precision: str = "float32", **kw: Any) -> CellSpec:
    return CellSpec(
        dataset="probe", strategy=strategy, precision=precision, seed=0, image_size=SIZE,
        alpha=0.35, weights="none", batch_size=BATCH, epochs=2, input="synthetic",
        num_classes=CLASSES, augmentation="flip", dense_units=16, **kw,
    )  # fmt: skip


def data(n: int = 3 * BATCH) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    return x, rng.integers(0, CLASSES, n).astype(np.int32)


WEIGHTS = (
    Path(__file__).resolve().parent.parent / "data" / "weights" / "mnv2-synth-a035-32.weights.h5"
)


def build(c: CellSpec, pretrained: bool = False) -> strategies.Built:
    """The cell's model; ``pretrained``: the smoke backbone weights (real BatchNorm statistics,
    so activations and gradients are healthy; a random backbone in inference mode saturates)."""
    keras.backend.clear_session()
    backend.set_random_seed(0)
    keras.mixed_precision.set_dtype_policy(c.precision)
    return strategies.build(c, CLASSES, WEIGHTS if pretrained else None, "probe")


def compile_and_fit(built: strategies.Built, stage: Any, callbacks: list[Any] = ()) -> None:
    jit = backend.resolve_jit_compile(None)
    strategies.compile_stage(built, stage, jit_compile=jit)
    x, y = data()
    built.model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=list(callbacks))


def precision_check() -> dict[str, Any]:
    out = {}
    for precision in ("mixed_bfloat16", "mixed_float16"):
        built = build(cell("fine-tune", precision))
        conv = next(la for la in built.backbone.layers if la.name == "Conv1")
        out[precision] = {
            "output_layer_policy": built.model.layers[-1].dtype_policy.name,
            "output_dtype": str(built.model.outputs[0].dtype),
            "backbone_compute_dtype": conv.compute_dtype,
            "backbone_variable_dtype": conv.variable_dtype,
        }
    keras.mixed_precision.set_dtype_policy("float32")
    return out


def _bn_stats(layer: Any) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(w)) for w in layer.non_trainable_weights]


def frozen_bn_and_timing_check() -> tuple[dict[str, Any], dict[str, Any]]:
    """fine-tune (K = 140): frozen BatchNorm layers in the first 140, trainable ones after;
    the same fit carries the step timer and, after it, the device-readiness probe."""
    built = build(cell("fine-tune", fine_tune_k=140), pretrained=True)
    bns = [la for la in built.backbone.layers if isinstance(la, keras.layers.BatchNormalization)]
    before = {la.name: _bn_stats(la) for la in bns}
    timer, probe = timing.StepTimer(1), ReadyProbe()
    compile_and_fit(built, built.plan.stages[0], [timer, probe])
    frozen_moved, trainable_moved = [], []
    for la in bns:
        moved = any(
            not np.array_equal(a, b) for a, b in zip(before[la.name], _bn_stats(la), strict=True)
        )
        frozen = not (la.trainable and built.backbone.trainable)
        (frozen_moved if frozen else trainable_moved).append((la.name, moved))
    bn = {
        "frozen": len(frozen_moved),
        "frozen_that_moved": [n for n, m in frozen_moved if m],
        "trainable": len(trainable_moved),
        "trainable_that_moved": [n for n, m in trainable_moved if m],
    }
    steps = {
        "steps": len(probe.pending),
        "timed_steps": len(timer.warmup[0]) + len(timer.segments[0]),
        "steps_with_pending_work": sum(map(bool, probe.pending)),
    }
    return bn, steps


def lr_scaling_check() -> dict[str, Any]:
    """Two-stage's second stage: backbone variables at lr × factor, head at lr."""
    c = cell("two-stage", head_epochs=1, backbone_lr_factor=0.1)
    built = build(c, pretrained=True)
    stage = built.plan.stages[1]
    strategies.set_stage(built, stage)
    jit = backend.resolve_jit_compile(None)
    strategies.compile_stage(built, stage, jit_compile=jit)
    x, y = data(BATCH)
    model = built.model
    backbone_paths = {w.path for w in built.backbone.trainable_weights}
    before = {w.path: keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights}
    model.train_on_batch(x, y)
    lr = c.learning_rate
    ratios: dict[str, list[float]] = {"backbone": [], "head": []}
    for w in model.trainable_weights:
        step = np.abs(keras.ops.convert_to_numpy(w) - before[w.path]).ravel()
        if step.max() > 0:  # per variable, the largest step (|g| >> ε there): lr × factor
            part = "backbone" if w.path in backbone_paths else "head"
            ratios[part].append(float(step.max() / lr))
    return {
        "factor": c.backbone_lr_factor,
        "backbone_step_over_lr": ratios["backbone"],
        "head_step_over_lr": ratios["head"],
        "optimizer": backend.optimizer_implementation(model.optimizer),
    }


class ReadyProbe(keras.callbacks.Callback):
    """After the step timer: is any array of the live state still being computed?"""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[int] = []

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        state = getattr(self.model, "_jax_state", None)
        if state:
            import jax

            arrays = [a for a in keras.tree.flatten(state) if isinstance(a, jax.Array)]
            self.pending.append(sum(1 for a in arrays if not a.is_ready()))
        else:
            self.pending.append(0)


def main() -> None:
    out = {
        "backend": backend.name(),
        "jit_compile": backend.resolve_jit_compile(None),
        "precision": precision_check(),
        "lr_scaling": lr_scaling_check(),
    }
    out["frozen_bn"], out["timing"] = frozen_bn_and_timing_check()
    peak, kind = backend.peak_memory()
    out["memory"] = {"bytes": peak, "kind": kind}
    out["frameworks_imported"] = sorted(
        m for m in ("tensorflow", "jax", "torch") if sys.modules.get(m) is not None
    )
    print("@@probe " + json.dumps(out))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
