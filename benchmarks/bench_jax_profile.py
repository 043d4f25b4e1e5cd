"""Where a training step's CPU time goes, per backend: compile, the whole step, forward and
backward alone, the optimizer, the depthwise and pointwise convolutions, host transfer.

Run once per backend (the backend is fixed when Keras is imported)::

    KERAS_BACKEND=jax        .venv/bin/python benchmarks/bench_jax_profile.py
    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/bench_jax_profile.py

The model is a smoke cell's (MobileNetV2 alpha 0.35, 32 px, batch 32, flip augmentation,
random weights: speed does not depend on them), built by :mod:`harness.cell.strategies`. For each
strategy it times, as medians over ``--steps`` calls after a warm-up, each call waited for:

- ``step_ms``: the compiled training step as ``fit`` runs it (``jax.jit`` on JAX, the
  ``tf.function`` graph on TensorFlow: each backend's default);
- ``fit_step_ms``: one step inside ``model.fit`` (second epoch): the step plus Keras's
  loop, callbacks and the host-to-device copy of the batch;
- ``fwd_bwd_ms``: loss and gradients only (no optimizer, no metrics);
- ``optimizer_ms``: the Adam update of every trainable variable alone;
- ``depthwise_ms`` / ``pointwise_ms``: forward and backward of the backbone's 17
  DepthwiseConv2D layers / its 1×1 and 3×3 Conv2D layers alone, at their shapes in this
  model (the trainable ones of the strategy; a frozen layer's input gradient still counts);
- ``h2d_ms``: copying one uint8 batch to the device;
- ``compile_s`` (JAX): lowering and XLA-compiling the training step, no cache.

One JSON line per strategy. The parts overlap (the step contains the convolutions), so
they are shares of ``step_ms``, not a sum.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_ENABLE_COMPILATION_CACHE", "false")

import keras
import numpy as np

from harness import backend
from harness.cell import strategies, timing
from harness.matrix import CellSpec

SIZE, BATCH, CLASSES = 32, 32, 5


def timed(fn: Callable[[], Any], sync: Callable[[Any], Any], steps: int, warmup: int) -> float:
    """Median milliseconds of ``fn()`` (its result waited for) after ``warmup`` calls."""
    _, times = timing.time_calls(lambda: sync(fn()), warmup=warmup, steps=steps)
    return 1000 * statistics.median(times)


def cell(strategy: str) -> CellSpec:
    return CellSpec(
        dataset="profile", strategy=strategy, precision="float32", seed=0, image_size=SIZE,
        alpha=0.35, weights="none", batch_size=BATCH, epochs=2, input="synthetic",
        num_classes=CLASSES, augmentation="flip", fine_tune_k=140,
        dense_units=1024 if strategy == "feature-extract" else 0,
    )  # fmt: skip


def conv_layers(built: strategies.Built, kind: str) -> list[tuple[Any, tuple[int, ...]]]:
    """(layer, input shape at BATCH) of the backbone's depthwise or regular convolutions."""
    want = keras.layers.DepthwiseConv2D if kind == "depthwise" else keras.layers.Conv2D
    found = []
    for layer in built.backbone.layers:
        if type(layer) is want:  # DepthwiseConv2D is no subclass of Conv2D in Keras 3
            found.append((layer, (BATCH, *tuple(layer.input.shape[1:]))))
    return found


def profile_jax(built: strategies.Built, x: np.ndarray, y: np.ndarray, a: Any) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    model = built.model
    model._symbolic_build(data_batch=(x, y))
    state = model._get_jax_state(
        trainable_variables=True, non_trainable_variables=True,
        optimizer_variables=True, metrics_variables=True,
    )  # fmt: skip
    data = (jnp.asarray(x), jnp.asarray(y))
    train_step = jax.jit(model.train_step)
    t0 = time.perf_counter()
    lowered = train_step.lower(state, data)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    out: dict[str, Any] = {"lower_s": t1 - t0, "compile_s": t2 - t1}
    out["step_ms"] = timed(lambda: compiled(state, data), jax.block_until_ready, a.steps, 2)

    tv, ntv, ov, mv = state

    def loss_fn(tv: Any, ntv: Any, xb: Any, yb: Any) -> Any:
        loss, _ = model.compute_loss_and_updates(
            tv, ntv, mv, xb, yb, None, training=True, optimizer_variables=ov
        )
        return loss

    grad = jax.jit(jax.value_and_grad(loss_fn))
    out["fwd_bwd_ms"] = timed(lambda: grad(tv, ntv, *data), jax.block_until_ready, a.steps, 2)
    grads = grad(tv, ntv, *data)[1]
    opt = jax.jit(model.optimizer.stateless_apply)
    out["optimizer_ms"] = timed(lambda: opt(ov, grads, tv), jax.block_until_ready, a.steps, 2)
    for kind in ("depthwise", "pointwise"):
        layers = conv_layers(built, kind)
        xs = [jnp.ones(shape, "float32") * 0.1 for _, shape in layers]
        # A frozen layer has no trainable weights: its gradient is the input's alone.
        ws = [[v.value for v in layer.trainable_variables] for layer, _ in layers]
        fixed = [[v.value for v in layer.non_trainable_variables] for layer, _ in layers]

        def conv_loss(ws: Any, xs: Any, layers: Any = layers, fixed: Any = fixed) -> Any:
            total = 0.0
            for (layer, _), w, nw, xi in zip(layers, ws, fixed, xs, strict=True):
                y_, _ = layer.stateless_call(w, nw, xi)
                total = total + jnp.sum(y_)
            return total

        g = jax.jit(jax.grad(conv_loss, argnums=(0, 1)))
        out[f"{kind}_ms"] = timed(lambda g=g, ws=ws, xs=xs: g(ws, xs), jax.block_until_ready,
                                  a.steps, 2)  # fmt: skip
        out[f"{kind}_layers"] = len(layers)
    batch = np.ascontiguousarray(x)
    out["h2d_ms"] = timed(lambda: jax.device_put(batch), jax.block_until_ready, a.steps, 2)
    return out


def profile_tf(built: strategies.Built, x: np.ndarray, y: np.ndarray, a: Any) -> dict[str, Any]:
    import tensorflow as tf

    model = built.model
    backend.prebuild_for_fit(model, x, y)
    data = (tf.constant(x), tf.constant(y))
    step = tf.function(model.train_step)
    t0 = time.perf_counter()
    step.get_concrete_function(data)
    out: dict[str, Any] = {"trace_s": time.perf_counter() - t0}
    out["step_ms"] = timed(lambda: step(data), lambda r: r, a.steps, 2)

    @tf.function
    def fwd_bwd(xb: Any, yb: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = model.compute_loss(xb, yb, model(xb, training=True))
        return tape.gradient(loss, model.trainable_variables)

    out["fwd_bwd_ms"] = timed(lambda: fwd_bwd(*data), lambda r: r, a.steps, 2)
    grads = fwd_bwd(*data)
    opt = model.optimizer

    @tf.function
    def apply() -> Any:
        opt.apply(grads, model.trainable_variables)
        return opt.iterations

    out["optimizer_ms"] = timed(apply, lambda r: r, a.steps, 2)
    for kind in ("depthwise", "pointwise"):
        layers = conv_layers(built, kind)
        xs = [tf.ones(shape) * 0.1 for _, shape in layers]

        @tf.function
        def conv_grad(xs: Any, layers: Any = layers) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(xs)
                sums = [tf.reduce_sum(layer(xi)) for (layer, _), xi in zip(layers, xs, strict=True)]
                total = tf.add_n(sums)
            ws = [w for layer, _ in layers for w in layer.weights]
            return tape.gradient(total, [*xs, *ws])

        out[f"{kind}_ms"] = timed(lambda f=conv_grad, xs=xs: f(xs), lambda r: r, a.steps, 2)
        out[f"{kind}_layers"] = len(layers)
    out["h2d_ms"] = timed(lambda: tf.constant(x), lambda r: r, a.steps, 2)
    return out


def fit_step_ms(built: strategies.Built, x: np.ndarray, y: np.ndarray, steps: int) -> float:
    """Median step of ``fit``'s second epoch (``steps`` steps), timed by the harness's own
    step timer (it waits for the device)."""
    model = built.model
    xs, ys = np.concatenate([x] * steps), np.concatenate([y] * steps)
    model.fit(xs, ys, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    clock = timing.StepTimer(0)
    model.fit(xs, ys, batch_size=BATCH, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
    return 1000 * statistics.median(clock.segments[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strategies", default="feature-extract,fine-tune,full-fine-tune")
    ap.add_argument("--steps", type=int, default=15)
    a = ap.parse_args()
    name = backend.name()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8)
    y = rng.integers(0, CLASSES, BATCH).astype(np.int32)
    for strategy in a.strategies.split(","):
        keras.backend.clear_session()
        backend.set_random_seed(0)
        c = cell(strategy)
        built = strategies.build(c, CLASSES, None, "random (profiling)")
        stage = strategies.plan(c).stages[-1]
        strategies.set_stage(built, stage)
        jit = backend.resolve_jit_compile(None)
        if jit:
            backend.enable_jit(built.model)
        strategies.compile_stage(built, stage, jit_compile=jit)
        found = (profile_jax if name == "jax" else profile_tf)(built, x, y, a)
        found["fit_step_ms"] = fit_step_ms(built, x, y, a.steps)
        row = {"backend": name, "strategy": strategy, "batch": BATCH, "jit_compile": jit}
        row.update({k: round(v, 3) if isinstance(v, float) else v for k, v in found.items()})
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
