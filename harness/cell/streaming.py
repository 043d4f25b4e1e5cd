"""Streaming input: train from the prepared cache batch by batch, never holding a split whole.

A prepared split is a ``.npy`` file of uint8 rows (:mod:`harness.datasets.cache`). Reading
it through its memory map would put every page a pass touches into this process's resident
set (file pages of a mapping count in RSS), so peak memory would still grow with the
dataset. :class:`RowReader` reads the rows of a batch with ``os.preadv`` into a fresh
buffer instead: the bytes pass through the kernel's page cache, which is not the
process's memory, and the GIL is released while they are copied, so reader threads
overlap with training.

:func:`stream` wraps a split in a ``keras.utils.PyDataset`` (works on every Keras
backend) whose worker threads prefetch batches while the model trains:

- the order of each epoch is a permutation drawn from ``(seed, epoch)``
  (:func:`epoch_order`), identical run to run and on every backend; batch ``i`` of epoch
  ``e`` equals ``images[order[i*B:(i+1)*B]]`` of the same split read whole;
- the last batch is the remainder (smaller), as ``model.fit`` does with arrays;
- ``fit`` must be called with ``shuffle=False`` (the order is the dataset's own) and with
  the dataset's :meth:`epoch_callback` among its callbacks (it tells the dataset which
  epoch begins; ``initial_epoch`` of a later stage continues the sequence).

:func:`choose_input` decides whether a cell reads its splits whole or streams them, and
says why (the runner records it in the result).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from harness.datasets.loader import PreparedSplit, batch_order

# Splits (train + val + test) up to this many bytes are read whole. Measured on 2 CPU
# cores (harness.perf.training.measure_streaming, interleaved, CPU seconds as the steady
# figure): at 224 px the stream costs what reading whole does (CPU-s ratio 0.999-0.975);
# at 32 px, where a step is cheap, the stream's reader threads and per-batch Python cost
# ~4.5 % more CPU (ratio 0.956). So small sets stay in memory, where they cost little next
# to the ~1 GB a cell process holds anyway, and only sets too big for that are streamed.
IN_MEMORY_MAX_BYTES = 256 << 20
# ... and never more than this fraction of the memory available when the cell starts.
IN_MEMORY_MAX_FRACTION = 0.25
# Forces the path of every cell this process runs: auto (the default), memory or stream.
ENV_INPUT_PATH = "BENCH_INPUT_PATH"
INPUT_MODES = ("auto", "memory", "stream")
DEFAULT_WORKERS = 2  # reader threads; 2 keep one batch ahead of a 2-core machine's steps
DEFAULT_QUEUE = 4  # batches read ahead


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's order: a distinct, reproducible stream per (seed, epoch)."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0])


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The sample order of epoch ``epoch``: :func:`harness.datasets.loader.batch_order`
    under :func:`epoch_seed`, or 0..n-1 without shuffling."""
    return batch_order(n, seed=epoch_seed(seed, epoch), shuffle=shuffle)


class RowReader:
    """Reads rows (images) of a split into fresh arrays, outside this process's memory map.

    For a memory-mapped ``.npy`` split the rows are read with ``os.preadv`` (a run of
    consecutive rows in one call); for an array already in memory they are gathered.
    Safe to call from several threads at once.
    """

    def __init__(self, images: np.ndarray) -> None:
        self.shape = tuple(int(d) for d in images.shape[1:])
        self.dtype = images.dtype
        self.row_bytes = int(np.prod(self.shape, dtype=np.int64)) * images.dtype.itemsize
        filename = getattr(images, "filename", None)
        self._fd: int | None = None
        self._array: np.ndarray | None = None
        if filename and isinstance(images, np.memmap) and images.flags.c_contiguous:
            self._fd = os.open(filename, os.O_RDONLY)
            self._offset = int(images.offset)
        else:
            self._array = np.asarray(images)

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` (in that order) as a new C-contiguous array."""
        index = np.asarray(index, dtype=np.int64)
        if self._array is not None:
            return np.ascontiguousarray(self._array[index])
        out = np.empty((len(index), *self.shape), dtype=self.dtype)
        flat = out.reshape(len(index), -1).view(np.uint8)
        start = 0
        while start < len(index):
            stop = start + 1  # extend a run of consecutive rows: one read for all of it
            while stop < len(index) and index[stop] == index[stop - 1] + 1:
                stop += 1
            want = (stop - start) * self.row_bytes
            pos = self._offset + int(index[start]) * self.row_bytes
            got = os.preadv(self._fd, [memoryview(flat[start:stop]).cast("B")], pos)
            if got != want:  # a regular file on a local disk returns all of it
                self._read_rest(flat[start:stop], pos, got, want)
            start = stop
        return out

    def _read_rest(self, buf: np.ndarray, pos: int, got: int, want: int) -> None:
        view = memoryview(buf).cast("B")
        while got < want:
            n = os.preadv(self._fd, [view[got:]], pos + got)
            if n <= 0:
                raise OSError(f"short read of the prepared cache at byte {pos + got}")
            got += n


def batches(
    split: PreparedSplit,
    batch_size: int,
    *,
    seed: int,
    epoch: int = 0,
    shuffle: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of ``(images, labels)`` batches as :func:`stream` serves them, without
    Keras (tests and benchmarks compare it with the in-memory gather)."""
    reader = RowReader(split.images)
    labels = np.asarray(split.labels, dtype=np.int32)
    order = epoch_order(len(split), seed=seed, epoch=epoch, shuffle=shuffle)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield reader.read(idx), labels[idx]
    finally:
        reader.close()


@dataclass(frozen=True)
class Rows:
    """Images and labels to stream that are not a whole prepared split (a split's memory
    map sliced by the runner, or stand-in arrays held in memory)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def stream(
    split: PreparedSplit | Rows,
    batch_size: int,
    *,
    seed: int,
    shuffle: bool = True,
    initial_epoch: int = 0,
    workers: int = DEFAULT_WORKERS,
    max_queue_size: int = DEFAULT_QUEUE,
) -> Any:
    """A ``keras.utils.PyDataset`` over ``split`` (see the module doc). ``initial_epoch``:
    the epoch the next ``fit`` starts at (a later stage continues the order)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cls = _dataset_class()
    return cls(
        split, batch_size, seed=seed, shuffle=shuffle, epoch=initial_epoch,
        workers=workers, max_queue_size=max_queue_size,
    )  # fmt: skip


@functools.cache
def _dataset_class() -> type:
    import keras

    class SplitDataset(keras.utils.PyDataset):
        """Batches of one prepared split, read on demand by worker threads."""

        def __init__(
            self,
            split: PreparedSplit | Rows,
            batch_size: int,
            *,
            seed: int,
            shuffle: bool,
            epoch: int,
            workers: int,
            max_queue_size: int,
        ) -> None:
            super().__init__(
                workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size
            )
            self.split = split
            self.batch_size = batch_size
            self.seed = seed
            self.shuffle = shuffle
            self.epoch = epoch
            self._reader = RowReader(split.images)
            self._labels = np.asarray(split.labels, dtype=np.int32)
            self._order = epoch_order(len(split), seed=seed, epoch=epoch, shuffle=shuffle)

        def __len__(self) -> int:
            return math.ceil(len(self._order) / self.batch_size)

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            if not 0 <= index < len(self):
                raise IndexError(f"batch {index} of {len(self)}")
            idx = self._order[index * self.batch_size : (index + 1) * self.batch_size]
            return self._reader.read(idx), self._labels[idx]

        def set_epoch(self, epoch: int) -> None:
            """Serve epoch ``epoch``'s order from now on (call only between epochs)."""
            if epoch != self.epoch:
                self.epoch = int(epoch)
                self._order = epoch_order(
                    len(self._order), seed=self.seed, epoch=self.epoch, shuffle=self.shuffle
                )

        def epoch_callback(self) -> Any:
            """The callback ``fit`` needs alongside this dataset: it sets the epoch's order
            from Keras's own epoch number at ``on_epoch_begin``, before Keras starts the
            epoch's reader threads (Keras also calls ``on_epoch_end`` of a dataset outside
            epochs, so the dataset cannot count epochs itself)."""
            return _EpochSetter(self)

    class _EpochSetter(keras.callbacks.Callback):
        def __init__(self, dataset: Any) -> None:
            super().__init__()
            self.dataset = dataset

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.dataset.set_epoch(epoch)

    return SplitDataset


# --- which path a cell takes ---------------------------------------------------------------


@dataclass(frozen=True)
class InputChoice:
    """How a cell reads its prepared splits, and why (recorded in the cell result)."""

    path: str  # "memory": read whole, arrays to fit; "stream": PyDataset from the cache
    reason: str
    data_bytes: int  # the cell's splits, uncompressed
    limit_bytes: int  # the most this machine reads whole

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable``), None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def requested_mode() -> str:
    """The path every cell is asked to take: ``$BENCH_INPUT_PATH`` (auto, memory or
    stream), "auto" when unset. A bad value is an InputError naming it."""
    from harness.errors import InputError

    mode = os.environ.get(ENV_INPUT_PATH, "").strip() or "auto"
    if mode not in INPUT_MODES:
        raise InputError(f"${ENV_INPUT_PATH} = {mode!r}: expected one of {', '.join(INPUT_MODES)}")
    return mode


def choose_input(
    data_bytes: int,
    *,
    mode: str = "auto",
    available: int | None = None,
    source: str = f"${ENV_INPUT_PATH}",
) -> InputChoice:
    """``memory`` or ``stream`` for a cell whose splits hold ``data_bytes``.

    ``mode``: "auto" (the rule below), "memory" or "stream" (forced: ``$BENCH_INPUT_PATH``,
    :func:`requested_mode`; ``source`` names who forced it in the reason). Auto reads
    whole what is at most :data:`IN_MEMORY_MAX_BYTES` and at most
    :data:`IN_MEMORY_MAX_FRACTION` of ``available`` (default: ``MemAvailable`` now), and
    streams the rest.
    """
    if data_bytes < 0:
        raise ValueError(f"data_bytes must be >= 0, got {data_bytes}")
    avail = available_memory() if available is None else available
    limit = IN_MEMORY_MAX_BYTES
    if avail is not None:
        limit = min(limit, int(avail * IN_MEMORY_MAX_FRACTION))
    size = f"{data_bytes / 2**20:.1f} MiB"
    if mode == "memory":
        return InputChoice("memory", f"forced ({source} = memory), {size}", data_bytes, limit)
    if mode == "stream":
        return InputChoice("stream", f"forced ({source} = stream), {size}", data_bytes, limit)
    if mode != "auto":
        raise ValueError(f"input mode must be auto, memory or stream, got {mode!r}")
    if data_bytes <= limit:
        return InputChoice(
            "memory",
            f"{size} <= {limit / 2**20:.0f} MiB: read whole (no reader threads or per-batch "
            "Python; small next to the process)",
            data_bytes,
            limit,
        )
    return InputChoice(
        "stream",
        f"{size} > {limit / 2**20:.0f} MiB: streamed from the prepared cache (memory stays "
        "flat as the dataset grows)",
        data_bytes,
        limit,
    )


def split_bytes(*splits: PreparedSplit | np.ndarray | None) -> int:
    """Bytes of the images of these splits, or of these image arrays (None: absent)."""
    return sum(int(getattr(s, "images", s).nbytes) for s in splits if s is not None)
