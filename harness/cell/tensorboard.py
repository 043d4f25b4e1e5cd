"""TensorBoard scalars for a cell: the callbacks the runner adds, and where they write.

Every cell writes under its run folder, ``<run>/tensorboard/<cell file stem>/`` (the cell id
with ``/`` as ``__``), so ``tensorboard --logdir reports/runs/<run>`` shows the whole matrix,
one TensorBoard run per cell and split (``train``, ``validation``):

* Keras' own :class:`keras.callbacks.TensorBoard` (``update_freq="epoch"``,
  ``profile_batch=0``, no graph, no histograms) writes the per-epoch metrics
  (``epoch_loss``, ``epoch_accuracy``, and for validation the same tags under
  ``validation/``) and ``epoch_learning_rate``;
* :class:`StepTimeScalars` writes what Keras' callback cannot: per epoch, the median of the
  measured (post-warm-up) step times that :class:`harness.cell.timing.StepTimer` took, as
  ``epoch_step_time_median_s`` and ``epoch_train_images_per_s`` in ``train/``.

Neither touches a measured step: Keras' batch hooks are disabled (:class:`EpochTensorBoard`;
with per-epoch writing they only make no-op summary calls), both callbacks come after the
step timer in the list, and all writing happens at epoch ends, between validation and the
next epoch. They read the model's logs and learning rate, never its weights or the RNG, so a
cell computes the same with or without them.

Writing goes through ``tf.summary``: where TensorFlow is not installed (a JAX or torch
machine without it), or ``BENCH_TENSORBOARD=0`` is set, no callback is added and the cell's
result says so (``extra["tensorboard"]``) instead of failing.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
from pathlib import Path
from typing import Any

import keras

from harness import runfolder

SWITCH = "BENCH_TENSORBOARD"
STEP_TIME_TAG = "epoch_step_time_median_s"
RATE_TAG = "epoch_train_images_per_s"


def log_dir(run_dir: Path, cell_id: str) -> Path:
    """``<run>/tensorboard/<cell file stem>``: one TensorBoard run per cell."""
    return runfolder.tensorboard_dir(run_dir, cell_id)


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback writing per epoch only: its batch hooks do nothing."""

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_test_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass


class StepTimeScalars(keras.callbacks.Callback):
    """Per epoch: median measured step time and the train images/s it gives, as scalars.

    Reads the step timer's current segment (one per ``fit``), so it must come after the
    timer in the callback list.
    """

    def __init__(self, train_dir: Path, step_timer: Any, batch_size: int) -> None:
        super().__init__()
        self.train_dir = Path(train_dir)
        self.step_timer = step_timer
        self.batch_size = batch_size
        self._start = 0
        self._writer: Any = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        segments = self.step_timer.segments
        self._start = len(segments[-1]) if segments else 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        segments = self.step_timer.segments
        steps = segments[-1][self._start :] if segments else []
        if not steps:  # every step of this epoch was warm-up
            return
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.train_dir))
        median = statistics.median(steps)
        with self._writer.as_default():
            tf.summary.scalar(STEP_TIME_TAG, median, step=epoch)
            tf.summary.scalar(RATE_TAG, self.batch_size / median, step=epoch)
        self._writer.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def callbacks(
    run_dir: Path | None, cell_id: str, step_timer: Any, *, batch_size: int
) -> tuple[list[keras.callbacks.Callback], dict[str, Any]]:
    """The TensorBoard callbacks for one cell and what to record about them in its result
    (``log_dir`` relative to the run folder)."""
    if run_dir is None:
        return [], {"status": "off", "reason": "no run folder to write into"}
    if os.environ.get(SWITCH) == "0":
        return [], {"status": "disabled", "reason": f"{SWITCH}=0"}
    if importlib.util.find_spec("tensorflow") is None:
        return [], {
            "status": "unavailable",
            "reason": "TensorFlow is not installed here; Keras' TensorBoard callback writes "
            "through tf.summary",
        }
    directory = log_dir(run_dir, cell_id)
    board = EpochTensorBoard(
        log_dir=str(directory),
        histogram_freq=0,
        write_graph=False,
        write_images=False,
        update_freq="epoch",
        profile_batch=0,
    )
    timing = StepTimeScalars(directory / "train", step_timer, batch_size)
    info = {
        "status": "written",
        "log_dir": str(directory.relative_to(run_dir)),
        "tags": {
            "train": [
                "epoch_loss",
                "epoch_accuracy",
                "epoch_learning_rate",
                STEP_TIME_TAG,
                RATE_TAG,
            ],
            "validation": ["epoch_loss", "epoch_accuracy"],
        },
    }
    return [board, timing], info
