"""Run one cell in this process and return its :class:`~harness.results.CellResult`.

Call it from a fresh process (``python -m harness.cell.process``): the seed, the precision
policy and the backend's graph caches are process-global. :func:`run_cell` runs five
phases, each a function with one job, in this order:

1. :func:`setup` — the precision check (a precision the device cannot run is an error,
   :class:`PrecisionUnsupported`, never a silent fallback; a dry run records it and runs
   the graph anyway, to check it), ``keras.utils.set_random_seed(seed)``, op determinism
   (on by default), ``keras.mixed_precision.set_dtype_policy(precision)`` (the output
   layer stays float32);
2. :func:`open_inputs` — the prepared uint8 cache the pre-flight made (or synthetic
   stand-ins of the same shape for ``input = "synthetic"`` and dry runs) and the weights
   file; it never prepares. Preprocessing and augmentation are layers inside the model,
   so the input side never limits the measured throughput. Small splits are read whole;
   splits too big for that stay memory-mapped and :func:`fit` and :func:`measure` stream
   them through :mod:`harness.cell.streaming` (:func:`harness.cell.streaming.choose_input`,
   ``$BENCH_INPUT_PATH`` forces either; the result's ``extra.input_path`` says which and
   why);
3. :func:`build` — the model (:mod:`harness.cell.strategies`);
4. :func:`fit` — one ``fit`` per stage with the timing callbacks (:mod:`harness.cell.timing`),
   TensorBoard's (:mod:`harness.cell.tensorboard`), ReduceLROnPlateau where the cell asks;
5. :func:`measure` — test accuracy, inference throughput at a fixed batch, peak memory,
   weights digest; then :func:`record` makes the :class:`~harness.results.CellResult`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness import backend, runfolder
from harness.cell import streaming
from harness.errors import BenchError, InputError
from harness.matrix import NO_WEIGHTS, SYNTHETIC_STEPS, CellSpec
from harness.results import CellResult, EpochRecord, Throughput

EpochHook = Callable[[dict[str, Any]], None]


class PrecisionUnsupported(BenchError):
    """The device cannot run the cell's precision (see :mod:`harness.backend`)."""

    exit_code = 2


@dataclass(frozen=True)
class CellData:
    """A cell's arrays, in memory: uint8 images N×H×W×3 and int32 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    num_classes: int
    input_kind: str  # "real" or "synthetic"
    digests: dict[str, str]
    note: str = ""
    # How fit and evaluate read the arrays: "memory" (arrays held whole) or "stream" (the
    # prepared cache's memory maps, read batch by batch; see :mod:`harness.cell.streaming`).
    choice: streaming.InputChoice | None = None

    @property
    def streamed(self) -> bool:
        return self.choice is not None and self.choice.path == "stream"


def num_classes_of(cell: CellSpec) -> int:
    if cell.input == "synthetic":
        assert cell.num_classes is not None
        return cell.num_classes
    from harness.manifest import load_manifest

    return load_manifest().dataset(cell.dataset).num_classes


def standins(cell: CellSpec, num_classes: int, n_train: int, n_val: int) -> CellData:
    """Random uint8 images and labels of the cell's shape (dry runs, synthetic input)."""
    rng = np.random.default_rng(cell.seed)
    s = cell.image_size

    def imgs(n: int) -> np.ndarray:
        return rng.integers(0, 256, size=(n, s, s, 3), dtype=np.uint8)

    def labels(n: int) -> np.ndarray:
        return rng.integers(0, num_classes, size=n, dtype=np.int32)

    return CellData(
        imgs(n_train), labels(n_train), imgs(n_val), labels(n_val), None, None,
        num_classes, "synthetic", {}, note="random uint8 stand-ins of the cell's shape",
    )  # fmt: skip


def load_data(cell: CellSpec, *, allow_unpinned: bool = False) -> CellData:
    """The prepared splits of a real-data cell: read into memory, or left memory-mapped to
    be streamed when :func:`harness.cell.streaming.choose_input` says so (too big to read
    whole, or ``$BENCH_INPUT_PATH``). Never prepares: the pre-flight did, in the parent; a
    missing cache is a clear error naming the command."""
    from harness.datasets.loader import open_split
    from harness.datasets.prepare import require_prepared

    require_prepared(cell.dataset, cell.image_size, allow_unpinned=allow_unpinned)
    train = open_split(cell.dataset, "train", cell.image_size)
    val = open_split(cell.dataset, "val", cell.image_size)
    try:
        test = open_split(cell.dataset, "test", cell.image_size)
    except InputError:
        test = None
    choice = streaming.choose_input(
        streaming.split_bytes(train, val, test), mode=streaming.requested_mode()
    )
    # Streamed: the np.memmap objects themselves (harness.cell.streaming.RowReader reads their
    # rows with preadv, so the batches are resident, not the file's pages).
    whole: Callable[[np.ndarray], np.ndarray] = (
        (lambda a: a) if choice.path == "stream" else np.ascontiguousarray
    )
    return CellData(
        whole(train.images), np.asarray(train.labels, np.int32),
        whole(val.images), np.asarray(val.labels, np.int32),
        None if test is None else whole(test.images),
        None if test is None else np.asarray(test.labels, np.int32),
        train.num_classes, "real", {"prepared": train.digest}, choice=choice,
    )  # fmt: skip


def resolve_backbone_weights(
    cell: CellSpec, *, dry_run: bool, allow_unpinned: bool
) -> tuple[Path | None, str]:
    """(weights file or None, what the backbone was initialised with, in words)."""
    if not cell.pretrained:
        why = "scratch" if cell.strategy == "scratch" else 'weights = "none"'
        return None, f"random init ({why})"
    from harness.datasets.weights import resolve_weights
    from harness.manifest import load_manifest

    entry = load_manifest().weight(cell.weights)
    arch = entry.architecture
    if float(arch.get("alpha", cell.alpha)) != cell.alpha:
        raise InputError(
            f"{cell.cell_id}: weights {cell.weights!r} are for alpha {arch.get('alpha')}, "
            f"the cell has alpha {cell.alpha}"
        )
    try:
        path = resolve_weights(cell.weights, allow_unpinned=allow_unpinned)
    except InputError as exc:
        if not dry_run:
            raise
        return None, (
            f"dry run: weights {cell.weights!r} not available here ({exc.message}); "
            "same architecture with RANDOM weights"
        )
    return path, f"{cell.weights} ({entry.pretrained_on}), {path.name}"


def weights_digest(model: Any) -> str:
    """sha256 over every weight of the model (trainable and not), in model order."""
    import keras

    h = hashlib.sha256()
    for w in model.weights:
        arr = np.ascontiguousarray(keras.ops.convert_to_numpy(w))
        h.update(f"{w.path}:{arr.dtype}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _cycle_batch(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) >= n:
        return np.ascontiguousarray(x[:n])
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n])


@dataclass(frozen=True)
class Setup:
    """Phase 1, the process: the precision check, seeds, determinism, dtype policy, jit."""

    backend_name: str
    devices: list[Any]
    notes: list[str]
    determinism: str
    jit_compile: bool
    compile_watch: Any  # open until :func:`measure` closes it


@dataclass(frozen=True)
class Inputs:
    """Phase 2, inputs: the cell's arrays and weights file, and how it will be fed and timed.

    Opens what the pre-flight prepared (or builds stand-ins); never prepares."""

    data: CellData
    batch: int
    epochs_map: dict[str, int]  # stage name -> the epoch it ends at
    warmup: int
    inference_batch: int
    inference_steps: int
    inference_warmup: int
    weights_file: Path | None
    weights_note: str


@dataclass(frozen=True)
class Fitted:
    """Phase 4, fit: the timers that watched training and what fitting decided."""

    epoch_timer: Any
    time_to_target: Any
    step_timer: Any
    optimizer: Any
    fit_model: Any
    x_test: Any  # the test split as fitted (features for linear-probe), or None
    y_test: Any
    input_kind: str  # "real", "synthetic" or "cached-features"
    epochs: int  # the last epoch reached
    jit_layers: list[str]
    jit_effective: bool
    extra: dict[str, Any]  # tensorboard, feature_cache, input_path
    test_streamed: bool = False  # x_test is a memory map that measure() streams


@dataclass(frozen=True)
class Measured:
    """Phase 5, measure: what the cell is judged by, beyond its learning curve."""

    test_accuracy: float | None
    inference: Throughput
    train: Throughput | None
    peak_memory: tuple[int, str]
    weights_digest: str
    layer_counts: dict[str, int]
    extra: dict[str, Any]  # train_throughput_stages, compile


def run_cell(
    cell: CellSpec,
    *,
    dry_run: bool = False,
    on_epoch: EpochHook | None = None,
    allow_unpinned: bool = False,
    run_dir: Path | None = None,
) -> CellResult:
    """Run ``cell`` in this process. Raises on failure (the caller records it).

    The phases, each with one job: :func:`setup` (the process's global state),
    :func:`open_inputs` (what the pre-flight prepared), :func:`build` (the model),
    :func:`fit` (training with the timing callbacks), :func:`measure` (test accuracy,
    inference, peak memory, weights digest) and :func:`record` (the CellResult).

    ``run_dir``: the run folder, under which the cell's TensorBoard events are written
    (:mod:`harness.cell.tensorboard`); None writes none."""
    t_start = time.perf_counter()
    from harness.cell import strategies

    env = setup(cell, dry_run=dry_run)
    num_classes = num_classes_of(cell)
    plan = strategies.plan(cell)
    inputs = open_inputs(cell, plan, num_classes, dry_run=dry_run, allow_unpinned=allow_unpinned)
    built = build(cell, inputs)
    fitted = fit(cell, plan, built, inputs, env, on_epoch=on_epoch, run_dir=run_dir)
    measured = measure(cell, plan, built, inputs, fitted, env)
    return record(
        cell, env, inputs, built, fitted, measured,
        dry_run=dry_run, wall_seconds=time.perf_counter() - t_start,
    )  # fmt: skip


def setup(cell: CellSpec, *, dry_run: bool) -> Setup:
    """The precision check, then seeds, op determinism, dtype policy; opens the compile
    watch. A precision the device cannot run raises :class:`PrecisionUnsupported` (a dry
    run notes it and goes on, to check the graph)."""
    import keras

    backend_name = backend.name()
    notes: list[str] = []
    devs = backend.devices()
    problem = backend.precision_problem(cell.precision, devs)
    if problem:
        if not dry_run:
            raise PrecisionUnsupported(f"{cell.cell_id}: {problem}")
        notes.append(f"dry run: {problem} — the graph was run anyway to check it")

    keras.utils.set_random_seed(cell.seed)
    determinism = backend.enable_determinism(cell.deterministic)
    keras.mixed_precision.set_dtype_policy(cell.precision)
    jit_compile = backend.resolve_jit_compile(cell.jit_compile, backend_name)
    compile_watch = backend.compile_watch().__enter__()  # closed once training is measured
    return Setup(backend_name, devs, notes, determinism, jit_compile, compile_watch)


def open_inputs(
    cell: CellSpec, plan: Any, num_classes: int, *, dry_run: bool, allow_unpinned: bool
) -> Inputs:
    """The cell's data (the prepared cache, or stand-ins for synthetic input and dry runs),
    its batch and epoch plan, and its backbone weights file. Never prepares anything."""
    if dry_run:
        batch = min(cell.dry_run_batch, cell.batch_size)
        steps = cell.dry_run_steps
        data = standins(cell, num_classes, batch * steps, batch)
        epochs_map = {s.name: i + 1 for i, s in enumerate(plan.stages)}
        warmup = min(cell.warmup_steps, steps - 1)
        inf_batch, inf_steps, inf_warm = batch, 1, 1
    else:
        batch = cell.batch_size
        if cell.input == "synthetic":
            steps = cell.steps_per_epoch or SYNTHETIC_STEPS
            data = standins(cell, num_classes, batch * steps, cell.inference_batch)
        else:
            data = load_data(cell, allow_unpinned=allow_unpinned)
        epochs_map = {s.name: s.until_epoch for s in plan.stages}
        warmup = cell.warmup_steps
        inf_batch, inf_steps, inf_warm = (
            cell.inference_batch,
            cell.inference_steps,
            cell.inference_warmup,
        )
    if data.choice is None:  # stand-ins, in memory: streamed only when forced
        size = streaming.split_bytes(data.x_train, data.x_val, data.x_test)
        data = dataclasses.replace(
            data, choice=streaming.choose_input(size, mode=streaming.requested_mode())
        )
    weights_file, weights_note = resolve_backbone_weights(
        cell, dry_run=dry_run, allow_unpinned=allow_unpinned
    )
    return Inputs(
        data, batch, epochs_map, warmup, inf_batch, inf_steps, inf_warm, weights_file,
        weights_note,
    )  # fmt: skip


def build(cell: CellSpec, inputs: Inputs) -> Any:
    """The cell's model (:func:`harness.cell.strategies.build`); the device's peak memory window
    starts after it."""
    from harness.cell import strategies

    built = strategies.build(
        cell, inputs.data.num_classes, inputs.weights_file, inputs.weights_note
    )
    backend.reset_peak_memory()
    return built


@dataclass(frozen=True)
class _Watch:
    """The callbacks that watch training, in the order Keras calls them."""

    epoch_timer: Any
    time_to_target: Any
    step_timer: Any
    callbacks: list[Any]
    tensorboard: dict[str, Any]  # what the TensorBoard callbacks write, or why none


@dataclass(frozen=True)
class _Feed:
    """What every stage's ``fit`` reads: arrays, or streamed batches (``train``/``val``)."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    batch: int
    train: Any = None  # a streaming.stream PyDataset, when the cell streams its input
    val: Any = None


def fit(
    cell: CellSpec,
    plan: Any,
    built: Any,
    inputs: Inputs,
    env: Setup,
    *,
    on_epoch: EpochHook | None,
    run_dir: Path | None,
) -> Fitted:
    """One ``fit`` per stage (:func:`fit_stage`) with the timing and TensorBoard callbacks
    (and ReduceLROnPlateau where the cell asks); linear-probe first computes its features
    once (:func:`_feature_cache`). A loss that is not finite raises (the cell diverged)."""
    data, batch = inputs.data, inputs.batch
    watch = _watch(cell, inputs, on_epoch=on_epoch, run_dir=run_dir)
    callbacks = watch.callbacks
    x_train, y_train, x_val, y_val = data.x_train, data.y_train, data.x_val, data.y_val
    x_test, y_test = data.x_test, data.y_test
    extra: dict[str, Any] = {"tensorboard": watch.tensorboard}
    input_kind = data.input_kind
    stream_fit = data.streamed and not plan.cached_features
    if plan.cached_features:
        (x_train, x_val, x_test), extra["feature_cache"] = _feature_cache(built, data, batch)
        input_kind = "cached-features"
    feed = _Feed(x_train, y_train, x_val, y_val, batch)
    if stream_fit:  # the dataset's own seeded order per epoch, set by its epoch callback
        train = streaming.stream(streaming.Rows(x_train, y_train), batch, seed=cell.seed)
        val = _feed(x_val, y_val, batch, stream=True)["x"]
        feed = dataclasses.replace(feed, train=train, val=val)
        callbacks.insert(0, train.epoch_callback())
    extra["input_path"] = _input_record(data, plan.cached_features)

    optimizer = None
    start_epoch = 0
    jit_layers: list[str] = []
    jit_effective = False
    fit_model = built.classifier if plan.cached_features else built.model
    for stage in plan.stages:
        end_epoch = inputs.epochs_map[stage.name]
        optimizer, jit_layers, jit_effective = fit_stage(
            built, stage, fit_model, feed, env, callbacks, start_epoch, end_epoch
        )
        start_epoch = end_epoch
    _check_finite(cell, watch.epoch_timer)
    return Fitted(
        watch.epoch_timer, watch.time_to_target, watch.step_timer, optimizer, fit_model,
        x_test, y_test, input_kind, start_epoch, jit_layers, jit_effective, extra,
        test_streamed=stream_fit,
    )  # fmt: skip


def _watch(
    cell: CellSpec, inputs: Inputs, *, on_epoch: EpochHook | None, run_dir: Path | None
) -> _Watch:
    """The epoch and step timers, time-to-target, TensorBoard's callbacks and the cell's
    ReduceLROnPlateau, in the order they must run."""
    import keras

    from harness.cell import tensorboard, timing

    data, batch, epochs_map = inputs.data, inputs.batch, inputs.epochs_map
    epoch_timer = timing.EpochTimer(
        on_epoch=(lambda row: on_epoch(_epoch_event(row, epochs_map))) if on_epoch else None
    )
    ttt = timing.TimeToTarget(cell.target_accuracy, epoch_timer)
    n_fit = len(data.x_train)
    step_timer = timing.StepTimer(  # the smaller remainder batch is timed apart
        inputs.warmup,
        partial_step=(n_fit // batch) if n_fit % batch and n_fit > batch else None,
    )
    callbacks: list[Any] = [epoch_timer, ttt, step_timer]
    # After the step timer, before ReduceLROnPlateau (so it logs the rate the epoch used).
    board_callbacks, board_info = tensorboard.callbacks(
        run_dir, cell.cell_id, step_timer, batch_size=batch
    )
    callbacks += board_callbacks
    if cell.reduce_lr:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=cell.reduce_lr_factor,
                patience=cell.reduce_lr_patience,
                min_lr=cell.reduce_lr_min,
            )
        )
    return _Watch(epoch_timer, ttt, step_timer, callbacks, board_info)


def _feature_cache(
    built: Any, data: CellData, batch: int
) -> tuple[tuple[Any, Any, Any], dict[str, Any]]:
    """Linear-probe: the features of train, val and test, computed once with the frozen
    backbone and kept in memory, and what that cost (``extra.feature_cache``)."""
    t0 = time.perf_counter()
    feat = built.feature_model

    def features(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        feed = _feed(x, y, batch, stream=data.streamed, labels=False)
        return feat.predict(**feed, verbose=0)

    x_train = features(data.x_train, data.y_train)
    x_val = features(data.x_val, data.y_val)
    x_test = features(data.x_test, data.y_test) if data.x_test is not None else None
    secs = time.perf_counter() - t0
    n_img = len(data.x_train) + len(data.x_val) + (0 if data.x_test is None else len(data.x_test))
    record = {
        "seconds": secs,
        "images": n_img,
        "images_per_s": n_img / secs if secs > 0 else None,
        "feature_dim": int(x_train.shape[-1]),
        "note": "features of train/val/test computed once with the frozen backbone (no "
        "augmentation: cached features cannot be augmented), kept in memory",
    }
    return (x_train, x_val, x_test), record


def fit_stage(
    built: Any,
    stage: Any,
    fit_model: Any,
    feed: _Feed,
    env: Setup,
    callbacks: list[Any],
    start_epoch: int,
    end_epoch: int,
) -> tuple[Any, list[str], bool]:
    """One stage of the plan: its freeze policy and optimizer, then ``fit`` from epoch
    ``start_epoch`` to ``end_epoch``; (optimizer, layers XLA compiles, whether Keras kept
    jit_compile on)."""
    from harness.cell import strategies

    strategies.set_stage(built, stage)
    jit_layers = backend.enable_jit(fit_model) if env.jit_compile else []
    optimizer = strategies.compile_stage(built, stage, jit_compile=env.jit_compile)
    jit_effective = bool(fit_model.jit_compile)  # Keras may turn it off (TF determinism)
    batch = feed.batch
    backend.prebuild_for_fit(fit_model, feed.x_train[:batch], feed.y_train[:batch])
    if feed.train is not None:
        fit_model.fit(
            feed.train, epochs=end_epoch, initial_epoch=start_epoch,
            validation_data=feed.val, shuffle=False, verbose=0, callbacks=callbacks,
        )  # fmt: skip
    else:
        fit_model.fit(
            feed.x_train, feed.y_train,
            batch_size=batch, epochs=end_epoch, initial_epoch=start_epoch,
            validation_data=(feed.x_val, feed.y_val), shuffle=True, verbose=0,
            callbacks=callbacks, validation_batch_size=_eval_batch(feed.x_val, batch),
        )  # fmt: skip
    return optimizer, jit_layers, jit_effective


def _check_finite(cell: CellSpec, epoch_timer: Any) -> None:
    """BenchError (exit 1) when a loss went to NaN or infinity: the cell diverged."""
    for row in epoch_timer.rows:
        bad = [k for k in ("loss", "val_loss") if k in row.logs and not np.isfinite(row.logs[k])]
        if bad:
            raise BenchError(
                f"{cell.cell_id}: training diverged: {bad[0]} is {row.logs[bad[0]]} at epoch "
                f"{row.epoch + 1}",
                exit_code=1,
            )


def measure(
    cell: CellSpec, plan: Any, built: Any, inputs: Inputs, fitted: Fitted, env: Setup
) -> Measured:
    """After training: test accuracy, inference throughput of the whole image model at a
    fixed batch (for linear-probe too), train throughput, peak memory, compile costs,
    weights digest. Closes the compile watch."""
    from harness.cell import strategies, timing

    data, batch = inputs.data, inputs.batch
    counts = strategies.layer_counts(built)
    extra: dict[str, Any] = {}
    test_accuracy = None
    if fitted.x_test is not None and fitted.y_test is not None:
        ev = fitted.fit_model.evaluate(
            **_feed(fitted.x_test, fitted.y_test, batch, stream=fitted.test_streamed),
            verbose=0, return_dict=True,
        )  # fmt: skip
        test_accuracy = float(ev["accuracy"])

    source = data.x_test if data.x_test is not None else data.x_val
    inf_x = _cycle_batch(source, inputs.inference_batch)
    model = built.model
    inf_warmup, inf_times = timing.time_calls(
        lambda: model.predict_on_batch(inf_x),
        warmup=inputs.inference_warmup,
        steps=inputs.inference_steps,
    )
    inference = Throughput.from_steps(
        "inference", inf_times, batch_size=inputs.inference_batch, precision=cell.precision,
        input_kind=data.input_kind, warmup_steps=len(inf_warmup),
    )  # fmt: skip

    step_timer = fitted.step_timer
    train_tp = None
    if step_timer.segments:
        last = len(step_timer.segments) - 1
        train_tp = step_timer.throughput(
            last, batch_size=batch, precision=cell.precision, input_kind=fitted.input_kind
        )
        if len(step_timer.segments) > 1:
            extra["train_throughput_stages"] = [
                {
                    "stage": stage.name,
                    "images_per_s": batch / float(np.median(seg)) if seg else None,
                    "measured_steps": len(seg),
                }
                for stage, seg in zip(plan.stages, step_timer.segments, strict=False)
            ]
    peak = backend.peak_memory()
    env.compile_watch.__exit__(None, None, None)
    extra["compile"] = _compile_record(
        env.compile_watch, fitted.epoch_timer.rows, step_timer, plan, inputs.epochs_map
    )
    return Measured(
        test_accuracy, inference, train_tp, peak, weights_digest(built.model), counts, extra
    )


def record(
    cell: CellSpec,
    env: Setup,
    inputs: Inputs,
    built: Any,
    fitted: Fitted,
    measured: Measured,
    *,
    dry_run: bool,
    wall_seconds: float,
) -> CellResult:
    """The :class:`CellResult` of a finished cell: the fields every cell record has
    (:func:`harness.runfolder.cell_fields`, shared with the failure record), its resolved
    config, learning curve and measurements (pure: reads what the earlier phases returned)."""
    history = _history(fitted.epoch_timer.rows)
    val_accs = [h.val_accuracy for h in history if h.val_accuracy is not None]
    train_accs = [h.accuracy for h in history]
    peak, peak_kind = measured.peak_memory
    ttt = fitted.time_to_target
    return CellResult(
        **runfolder.cell_fields(cell),
        backend=env.backend_name,
        status="ok",
        config=_resolved_config(cell, env, inputs, built, fitted, dry_run=dry_run),
        history=history,
        best_train_accuracy=max(train_accs) if train_accs else None,
        best_val_accuracy=max(val_accs) if val_accs else None,
        final_val_accuracy=val_accs[-1] if val_accs else None,
        test_accuracy=measured.test_accuracy,
        time_to_target_s=ttt.seconds,
        epochs_to_target=ttt.epochs,
        train_throughput=measured.train,
        inference_throughput=measured.inference,
        peak_memory_bytes=peak,
        peak_memory_kind=peak_kind,
        wall_seconds=wall_seconds,
        weights_digest=measured.weights_digest,
        trainable_layers=measured.layer_counts["trainable_layers"],
        frozen_layers=measured.layer_counts["frozen_layers"],
        extra=_extra(cell, env, fitted, measured),
    )


def _history(rows: list[Any]) -> tuple[EpochRecord, ...]:
    """The learning curve as Keras logged it, one record per epoch."""
    return tuple(
        EpochRecord(
            epoch=r.epoch,
            loss=r.logs.get("loss", float("nan")),
            accuracy=r.logs.get("accuracy", float("nan")),
            val_loss=r.logs.get("val_loss"),
            val_accuracy=r.logs.get("val_accuracy"),
            learning_rate=r.learning_rate,
            seconds=r.seconds,
        )
        for r in rows
    )


def _resolved_config(
    cell: CellSpec, env: Setup, inputs: Inputs, built: Any, fitted: Fitted, *, dry_run: bool
) -> dict[str, Any]:
    """The cell's config as it ran: the spec, what was effective, optimizer, plan, devices."""
    from harness.cell import strategies

    data = inputs.data
    optimizer = fitted.optimizer
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    config = {
        **cell.to_dict(),
        "cell_id": cell.cell_id,
        "jit_compile": env.jit_compile,  # resolved: the cell's, else its backend's default
        "dry_run": dry_run,
        "effective": {
            "batch_size": inputs.batch,
            "epochs": fitted.epochs,
            "num_classes": data.num_classes,
            "train_examples": len(data.x_train),
            "val_examples": len(data.x_val),
            "test_examples": None if data.x_test is None else len(data.x_test),
            "warmup_steps": inputs.warmup,
            "inference_batch": inputs.inference_batch,
            "inference_steps": inputs.inference_steps,
        },
        "optimizer": {
            "name": "adam",
            "learning_rate": cell.learning_rate,
            "implementation": backend.optimizer_implementation(inner),
            "loss_scaling": optimizer is not inner,
        },
        "loss": "sparse_categorical_crossentropy",
        "preprocess": "Rescaling(1/127.5, offset=-1) == mobilenet_v2.preprocess_input",
        "strategy_plan": strategies.describe(built),
        "determinism": env.determinism,
        "devices": [d.__dict__ for d in env.devices],
        "input": data.input_kind,
        "data_note": data.note,
        "data_digests": data.digests,
    }
    # False: random init (see weights_note)
    config["weights_loaded"] = inputs.weights_file is not None
    if inputs.weights_file is not None:
        config["weights_file"] = str(inputs.weights_file)
    return config


def _extra(cell: CellSpec, env: Setup, fitted: Fitted, measured: Measured) -> dict[str, Any]:
    """``extra``: what fitting and measuring recorded, the backend as it ran, layer counts
    and notes."""
    extra: dict[str, Any] = {**fitted.extra, **measured.extra}
    extra["backend"] = {
        "name": env.backend_name,
        "jit_compile": env.jit_compile,
        "jit_compile_effective": fitted.jit_effective,  # what Keras ran: False if it refused
        "jit_enabled_layers": fitted.jit_layers,
        "jit_meaning": backend.jit_meaning(env.jit_compile, env.backend_name),
        "runtime": backend.runtime_info(),
    }
    extra["layer_counts"] = measured.layer_counts
    if env.notes:
        extra["notes"] = list(env.notes)
    if cell.weights == NO_WEIGHTS and cell.strategy != "scratch":
        extra.setdefault("notes", []).append(
            "random backbone (weights = 'none'): a control, not the strategy as designed"
        )
    return extra


def _eval_batch(x: Any, batch: int) -> int:
    """The backend's batch size for evaluating ``x`` (one compiled shape on JAX)."""
    return backend.eval_batch_size(len(x), batch)


def _feed(
    x: np.ndarray, y: np.ndarray, batch: int, *, stream: bool, labels: bool = True
) -> dict[str, Any]:
    """``evaluate`` (``labels``) or ``predict`` arguments over images ``x`` (labels ``y``)
    at the eval batch: the arrays, or, streamed, an unshuffled PyDataset reading the rows
    from the memory map as they are needed, never the split whole (``predict`` ignores
    the labels it serves)."""
    size = _eval_batch(x, batch)
    if stream:
        return {"x": streaming.stream(streaming.Rows(x, y), size, seed=0, shuffle=False)}
    return {"x": x, "y": y, "batch_size": size} if labels else {"x": x, "batch_size": size}


def _input_record(data: CellData, cached_features: bool) -> dict[str, Any]:
    """``extra.input_path``: which path the cell's inputs took and why."""
    choice = data.choice
    if choice is None:  # open_inputs always chooses; a CellData made elsewhere may not
        return {"path": "memory", "reason": "arrays given in memory", "fed": "arrays"}
    if not data.streamed:
        fed = "uint8 arrays held in memory, fit(shuffle=True)"
    elif cached_features:
        fed = (
            "features computed from the stream (unshuffled PyDataset over the memory map), "
            "then held in memory for the classifier's fit"
        )
    else:
        fed = (
            f"keras.utils.PyDataset over the memory map ({streaming.DEFAULT_WORKERS} reader "
            f"threads, {streaming.DEFAULT_QUEUE} batches ahead, its own seeded order per "
            "epoch); validation and test streamed unshuffled"
        )
    return {**choice.to_dict(), "fed": fed}


def _compile_record(
    watch: Any, rows: list[Any], step_timer: Any, plan: Any, epochs_map: dict[str, int]
) -> dict[str, Any]:
    """What compiling cost the cell: per stage, its first epoch minus the median of its later
    epochs and its first step minus the median step (trace, compile and first-call costs, on
    every backend alike), and what the backend itself reports (JAX: its compile events)."""
    stages = []
    start = 0
    for i, stage in enumerate(plan.stages):
        end = epochs_map[stage.name]
        secs = [r.seconds for r in rows if start <= r.epoch < end]
        start = end
        steps = step_timer.segments[i] if i < len(step_timer.segments) else []
        first = (
            step_timer.warmup[i][0] if i < len(step_timer.warmup) and step_timer.warmup[i] else None
        )
        stages.append(
            {
                "stage": stage.name,
                "first_epoch_overhead_s": (
                    secs[0] - float(np.median(secs[1:])) if len(secs) >= 2 else None
                ),
                "first_step_overhead_s": (
                    first - float(np.median(steps)) if first is not None and steps else None
                ),
            }
        )
    known = [s["first_epoch_overhead_s"] for s in stages if s["first_epoch_overhead_s"] is not None]
    return {
        "estimate": "first epoch minus the median later epoch, per stage",
        "overhead_s": sum(known) if known else None,
        "stages": stages,
        "observed": watch.summary(),
    }


def _epoch_event(row: Any, epochs_map: dict[str, int]) -> dict[str, Any]:
    return {
        "epoch": row.epoch + 1,
        "epochs": max(epochs_map.values()),
        "seconds": row.seconds,
        **{
            k: row.logs[k]
            for k in ("loss", "accuracy", "val_loss", "val_accuracy")
            if k in row.logs
        },
    }
