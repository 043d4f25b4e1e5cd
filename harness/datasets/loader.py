"""Batches of prepared uint8 images, shuffled by a seeded RNG; NumPy only (no TensorFlow).

The runner opens a split with :func:`open_split` (a read-only memmap of the prepared
cache) and iterates :func:`iterate_batches`; the same seed always gives the same order,
whichever Keras backend consumes the batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from harness.datasets import cache
from harness.errors import InputError


@dataclass(frozen=True)
class PreparedSplit:
    """One split of a prepared dataset: images uint8 N×H×W×3 (memmap) and int32 labels."""

    name: str
    split: str
    image_size: int
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    num_classes: int
    digest: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def open_split(name: str, split: str, image_size: int) -> PreparedSplit:
    """Open ``split`` of dataset ``name`` prepared at ``image_size`` px (memory-mapped)."""
    folder = cache.cache_dir(name, image_size)
    meta = cache.try_read_meta(folder)
    if meta is None:
        raise InputError(
            f"dataset {name!r} is not prepared at {image_size} px ({folder}): run "
            f"`bench data prepare {name} --image-size {image_size}`"
        )
    if split not in meta["splits"]:
        known = ", ".join(sorted(meta["splits"]))
        raise InputError(f"dataset {name!r} has no split {split!r} (known: {known})")
    images, labels = cache.load_arrays(folder, split)
    labels = np.asarray(labels, dtype=np.int32)
    if images.shape[0] != labels.shape[0] or images.shape[0] != meta["splits"][split]:
        raise InputError(
            f"{folder}: split {split!r} holds {images.shape[0]} images and {labels.shape[0]} "
            f"labels, meta.json says {meta['splits'][split]}: run "
            f"`bench data prepare {name} --image-size {image_size}`"
        )
    return PreparedSplit(
        name=name,
        split=split,
        image_size=image_size,
        images=images,
        labels=labels,
        class_names=tuple(meta["class_names"]),
        num_classes=int(meta["num_classes"]),
        digest=str(meta["digest"]),
    )


def batch_order(n: int, *, seed: int, shuffle: bool = True) -> np.ndarray:
    """The sample order of one pass: a permutation drawn from ``seed``, or 0..n-1."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng(seed).permutation(n)


def iterate_batches(
    split: PreparedSplit,
    batch_size: int,
    *,
    seed: int,
    shuffle: bool = True,
    drop_remainder: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images uint8 B×H×W×3, labels int32 B)`` for one pass over ``split``.

    Same ``seed``, same order. Each batch is a fresh in-memory ndarray gathered from the
    memmap, so a consumer may keep or modify it.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    n = len(split)
    order = batch_order(n, seed=seed, shuffle=shuffle)
    stop = n - n % batch_size if drop_remainder else n
    images = np.asarray(split.images).view(np.ndarray)
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield images[idx], split.labels[idx]
