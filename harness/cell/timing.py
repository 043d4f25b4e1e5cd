"""Timing as Keras callbacks: step times, epoch times, learning rate, time to a target.

Each callback is a lifecycle hook (``on_train_batch_begin/end``, ``on_epoch_begin/end``);
none touches the data. Step times are taken between ``on_train_batch_begin`` and
``on_train_batch_end``, and the end time only after the device has finished the step:
:class:`StepTimer` calls the backend's ``sync`` (``jax.block_until_ready`` on the model's
state, ``torch.cuda.synchronize``, TensorFlow's ``sync_devices`` on a GPU) before reading
the clock, so asynchronous dispatch cannot make a step look shorter than it was. (These
callbacks are not ``async_safe`` either, so Keras also hands them materialised logs.)
A last step of an epoch with a smaller batch (the remainder of the split) is kept apart:
images/s is ``batch / median step time`` and counts full batches only.
Validation runs outside those brackets and is not counted in step times; epoch seconds
include it (the time a user waits for an epoch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras

from harness.results import Throughput


class StepTimer(keras.callbacks.Callback):
    """Per-step wall times of training; the first ``warmup_steps`` of each fit() excluded.

    Each ``fit()`` call (a stage) starts a new segment, since a recompiled model traces and
    warms up again. ``segments[i]`` holds the measured (post-warm-up) full-batch step
    seconds, ``partial[i]`` the times of remainder steps (``partial_step``: the index of the
    smaller last batch of an epoch, None when the split divides evenly), ``warmup[i]`` the
    excluded first steps. ``sync(model)`` waits for the device before a step's end time
    is read (default: :func:`harness.backend.sync`).
    """

    def __init__(
        self,
        warmup_steps: int,
        *,
        partial_step: int | None = None,
        sync: Callable[[Any], None] | None = None,
    ) -> None:
        super().__init__()
        self.warmup_steps = warmup_steps
        self.partial_step = partial_step
        if sync is None:
            from harness import backend

            sync = backend.sync
        self._sync = sync
        self.segments: list[list[float]] = []
        self.warmup: list[list[float]] = []
        self.partial: list[list[float]] = []
        self._t0 = 0.0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.segments.append([])
        self.warmup.append([])
        self.partial.append([])

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._sync(self.model)
        dt = time.perf_counter() - self._t0
        if batch == self.partial_step:
            self.partial[-1].append(dt)
        elif len(self.warmup[-1]) < self.warmup_steps:
            self.warmup[-1].append(dt)
        else:
            self.segments[-1].append(dt)

    def throughput(
        self, segment: int, *, batch_size: int, precision: str, input_kind: str
    ) -> Throughput | None:
        """Images/s of one segment (median and IQR of step times); None if nothing measured."""
        steps = self.segments[segment] if self.segments else []
        if not steps:
            return None
        return Throughput.from_steps(
            "train", steps, batch_size=batch_size, precision=precision, input_kind=input_kind,
            warmup_steps=len(self.warmup[segment]),
        )  # fmt: skip


@dataclass
class EpochRow:
    epoch: int
    seconds: float
    learning_rate: float
    logs: dict[str, float]


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds, logs and the optimizer's learning rate of every epoch.

    The learning rate is read at the *start* of the epoch (the rate the epoch trained with;
    ReduceLROnPlateau lowers it at an epoch's end, for the next one).
    """

    def __init__(self, on_epoch: Callable[[EpochRow], None] | None = None) -> None:
        super().__init__()
        self.rows: list[EpochRow] = []
        self._t0 = 0.0
        self._lr = 0.0
        self._on_epoch = on_epoch

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._lr = current_learning_rate(self.model)
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        row = EpochRow(
            epoch=epoch,
            seconds=time.perf_counter() - self._t0,
            learning_rate=self._lr,
            logs={k: float(v) for k, v in (logs or {}).items()},
        )
        self.rows.append(row)
        if self._on_epoch:
            self._on_epoch(row)

    @property
    def total_seconds(self) -> float:
        return sum(r.seconds for r in self.rows)


class TimeToTarget(keras.callbacks.Callback):
    """Training seconds (sum of epoch times) until ``val_accuracy`` first reaches ``target``."""

    def __init__(self, target: float | None, epoch_timer: EpochTimer) -> None:
        super().__init__()
        self.target = target
        self.epoch_timer = epoch_timer
        self.seconds: float | None = None
        self.epochs: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.target is None or self.seconds is not None:
            return
        acc = (logs or {}).get("val_accuracy")
        if acc is not None and float(acc) >= self.target:
            # EpochTimer runs before this callback, so its rows include this epoch.
            self.seconds = self.epoch_timer.total_seconds
            self.epochs = epoch + 1


def current_learning_rate(model: Any) -> float:
    """The optimizer's current base learning rate as a float (schedules evaluated)."""
    opt = getattr(model, "optimizer", None)
    if opt is None:
        return float("nan")
    inner = getattr(opt, "inner_optimizer", opt)  # LossScaleOptimizer wraps the real one
    lr = inner.learning_rate
    return float(keras.ops.convert_to_numpy(lr))


def time_calls(
    fn: Callable[[], Any], *, warmup: int, steps: int
) -> tuple[list[float], list[float]]:
    """Call ``fn`` ``warmup`` then ``steps`` times; returns (warm-up times, measured times).

    ``fn`` must return only once its work is done (e.g. ``predict_on_batch``, which returns
    host arrays).
    """
    times = []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times[:warmup], times[warmup:]
