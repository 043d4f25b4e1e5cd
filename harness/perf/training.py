"""Training-side figures, measured in this process: the harness's overhead over a bare
``model.fit``, and streamed training against in-memory training at 224 px.

Both interleave the two things compared (A B A B …, after a warm-up of each that traces
the graph), so a change in the machine's load hits both alike; the figure is the ratio
of medians, and the best-of and CPU-second ratios are kept as steadier cross-checks.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np

BATCH = 32


def _cell(strategy: str, size: int, **kw: Any) -> Any:
    from harness.matrix import CellSpec

    return CellSpec(
        dataset="perf", strategy=strategy, precision="float32", seed=0, image_size=size,
        alpha=0.35, weights="none", batch_size=BATCH, epochs=1, input="synthetic",
        num_classes=10, **kw,
    )  # fmt: skip


def measure_overhead(steps: int = 40, rounds: int = 7) -> dict[str, Any]:
    """Harness train throughput ÷ bare ``model.fit`` (target >= 0.97).

    Bare: the cell's architecture (MobileNetV2 alpha 0.35, 32 px, full-fine-tune, flip
    augmentation in the model) compiled the plain Keras way (``keras.optimizers.Adam``,
    sparse categorical cross-entropy, accuracy), ``fit`` without callbacks. Harness: the
    same architecture through the runner's path — :func:`harness.cell.strategies.compile_stage`
    (the harness's Adam, the backend's ``jit_compile``), :func:`harness.backend.prebuild_for_fit`
    and the timing callbacks (step timer with device sync, epoch timer with the learning
    rate, time-to-target). One epoch of ``steps`` batches of uint8 arrays in memory per
    fit; ratio = median bare epoch seconds / median harness epoch seconds.
    """
    import keras

    from harness import backend
    from harness.cell import strategies, timing

    cell = _cell("full-fine-tune", 32, augmentation="flip")
    keras.utils.set_random_seed(0)
    backend.enable_determinism(True)
    bare = strategies.build(cell, 10, None, "random (benchmark)").model
    bare.compile(
        optimizer=keras.optimizers.Adam(cell.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    keras.utils.set_random_seed(0)
    built = strategies.build(cell, 10, None, "random (benchmark)")
    strategies.compile_stage(
        built, built.plan.stages[0], jit_compile=backend.resolve_jit_compile(None)
    )
    harness_model = built.model
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (steps * BATCH, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, steps * BATCH, dtype=np.int32)
    backend.prebuild_for_fit(harness_model, x[:BATCH], y[:BATCH])

    wall: dict[str, list[float]] = {"bare": [], "harness": []}
    cpu: dict[str, list[float]] = {"bare": [], "harness": []}
    reported: list[float] = []

    def fit(model: Any, callbacks: list[Any], kind: str = "") -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=True, callbacks=callbacks)
        if kind:
            wall[kind].append(time.perf_counter() - t0)
            cpu[kind].append(time.process_time() - c0)

    for model in (bare, harness_model):  # trace + warm up
        fit(model, [])
        fit(model, [])
    for _ in range(rounds):
        fit(bare, [], "bare")
        et = timing.EpochTimer()
        st = timing.StepTimer(3)
        fit(harness_model, [et, timing.TimeToTarget(0.99, et), st], "harness")
        tp = st.throughput(0, batch_size=BATCH, precision="float32", input_kind="synthetic")
        reported.append(tp.images_per_s if tp else float("nan"))
    b, h = statistics.median(wall["bare"]), statistics.median(wall["harness"])
    images = steps * BATCH
    return {
        "setting": "MobileNetV2 a0.35 32px full-fine-tune, batch 32, float32, uint8 in memory; "
        "bare: plain compile + fit; harness: strategies.compile_stage + timing callbacks",
        "backend": keras.backend.backend(),
        "steps_per_epoch": steps,
        "rounds": rounds,
        "bare_epoch_s": wall["bare"],
        "harness_epoch_s": wall["harness"],
        "bare_images_per_s": images / b,
        "harness_images_per_s": images / h,
        "ratio_harness_over_bare": b / h,
        "ratio_best_of": min(wall["bare"]) / min(wall["harness"]),
        "ratio_cpu_seconds": statistics.median(cpu["bare"]) / statistics.median(cpu["harness"]),
        "harness_reported_images_per_s_median": statistics.median(reported),
        "load_average_1m": os.getloadavg()[0],
    }


class _EpochClock:
    """Wall seconds of every epoch (a Keras callback built on first use)."""

    def __new__(cls) -> Any:
        import keras

        class Clock(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.seconds: list[float] = []
                self._t0 = 0.0

            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self._t0 = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                self.seconds.append(time.perf_counter() - self._t0)

        return Clock()


def measure_streaming(
    name: str,
    *,
    size: int = 224,
    epochs: int = 2,
    rounds: int = 3,
    strategy: str = "feature-extract",
) -> dict[str, Any]:
    """Streamed training throughput ÷ in-memory (target >= 0.97), at ``size`` px.

    One model (MobileNetV2 alpha 0.35, ``strategy`` with random weights, batch 32, the
    harness's compile path), trained alternately on the prepared split ``name`` read whole
    (uint8 arrays, ``fit(shuffle=True)``, the runner's path for small sets) and streamed
    from the cache (:func:`harness.cell.streaming.stream`, reader threads prefetching, the
    runner's path for large sets). Each round is one
    ``fit`` of ``epochs`` epochs per path; every epoch is timed; the first ``fit`` of each
    path (tracing) is not counted. Ratio = median in-memory epoch / median streamed epoch.
    """
    import keras

    from harness import backend
    from harness.cell import strategies, streaming
    from harness.datasets.loader import open_split

    split = open_split(name, "train", size)
    cell = _cell(strategy, size, augmentation="none")
    keras.utils.set_random_seed(0)
    built = strategies.build(cell, split.num_classes, None, "random (benchmark)")
    strategies.compile_stage(
        built, built.plan.stages[0], jit_compile=backend.resolve_jit_compile(None)
    )
    model = built.model
    t_load = time.perf_counter()
    x, y = np.ascontiguousarray(split.images), np.asarray(split.labels, np.int32)
    load_s = time.perf_counter() - t_load
    backend.prebuild_for_fit(model, x[:BATCH], y[:BATCH])
    data = streaming.stream(split, BATCH, seed=0)

    def fit_memory(clock: Any) -> None:
        model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0, callbacks=[clock])

    def fit_stream(clock: Any) -> None:
        model.fit(
            data, epochs=epochs, shuffle=False, verbose=0, callbacks=[clock, data.epoch_callback()]
        )

    times: dict[str, list[float]] = {"memory": [], "stream": []}
    cpu: dict[str, list[float]] = {"memory": [], "stream": []}
    fits = {"memory": fit_memory, "stream": fit_stream}
    for fn in fits.values():
        fn(_EpochClock())
    for _ in range(rounds):
        for key, fn in fits.items():
            clock = _EpochClock()
            c0 = time.process_time()
            fn(clock)
            cpu[key].append(time.process_time() - c0)
            times[key].extend(clock.seconds)
    n = len(split)
    m, s = statistics.median(times["memory"]), statistics.median(times["stream"])
    return {
        "setting": f"MobileNetV2 a0.35 {size}px {strategy} (random weights), batch {BATCH}, "
        f"float32, {n} prepared images ({n * x[0].nbytes / 2**20:.0f} MiB); "
        f"{rounds} interleaved rounds of {epochs} epochs per path",
        "backend": keras.backend.backend(),
        "images": n,
        "memory_epoch_s": times["memory"],
        "stream_epoch_s": times["stream"],
        "memory_images_per_s": n / m,
        "stream_images_per_s": n / s,
        "ratio_stream_over_memory": m / s,
        "ratio_best_of": min(times["memory"]) / min(times["stream"]),
        "ratio_cpu_seconds": statistics.median(cpu["memory"]) / statistics.median(cpu["stream"]),
        "memory_read_whole_s": load_s,
        "stream_workers": data.workers,
        "load_average_1m": os.getloadavg()[0],
    }
