"""The prepared cache: one folder per dataset and image size, published atomically.

Layout: ``<prepared_dir>/<dataset>/<size>/`` holding ``<split>.images.npy`` (uint8,
N×H×W×3, always RGB), ``<split>.labels.npy`` (int32, N) and ``meta.json`` (kind
``transfer-bench.prepared``, schema 1) with the class names, split counts and the cache's
digest. A :class:`CacheWriter` fills a hidden staging folder next to the final one and
swaps it in only when everything is written, so a failure never touches an earlier cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from harness import __version__, jsonio, paths
from harness.errors import InputError

CACHE_KIND = "transfer-bench.prepared"
CACHE_SCHEMA = 1
META = "meta.json"
_CHUNK_BYTES = 64 << 20


def cache_dir(name: str, image_size: int) -> Path:
    """Where the prepared cache of dataset ``name`` at ``image_size`` px lives."""
    return paths.prepared_dir() / name / str(image_size)


@contextlib.contextmanager
def lock(name: str, image_size: int) -> Iterator[None]:
    """Serialise builders of one cache across processes (parallel cells preparing the same
    synthetic dataset): the second one waits, then finds the cache ready."""
    path = paths.prepared_dir() / name / f".{image_size}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            # Holding the lock, any staging folder of this size belongs to a dead builder.
            for stale in path.parent.glob(f".{image_size}.staging-*"):
                shutil.rmtree(stale, ignore_errors=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def images_file(folder: Path, split: str) -> Path:
    return folder / f"{split}.images.npy"


def labels_file(folder: Path, split: str) -> Path:
    return folder / f"{split}.labels.npy"


def _update_array(h: Any, array: np.ndarray) -> None:
    """Feed a C-contiguous array's bytes to ``h`` in bounded chunks (works on memmaps)."""
    array = np.ascontiguousarray(array)
    if array.ndim == 0 or array.shape[0] == 0:
        h.update(array.tobytes())
        return
    row_bytes = max(1, array.nbytes // array.shape[0])
    step = max(1, _CHUNK_BYTES // row_bytes)
    for start in range(0, array.shape[0], step):
        h.update(memoryview(array[start : start + step]).cast("B"))


def prepared_digest(
    class_names: tuple[str, ...] | list[str],
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> str:
    """sha256 over the class names, the split shapes and every image and label byte.

    ``splits`` maps a split name to ``(images uint8 N×H×W×3, labels int32 N)``; the
    order of the mapping does not matter.
    """
    header = {
        "class_names": list(class_names),
        "splits": {
            s: {"images": list(im.shape), "labels": int(lb.shape[0])}
            for s, (im, lb) in splits.items()
        },
    }
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for split in sorted(splits):
        images, labels = splits[split]
        _update_array(h, np.asarray(images, dtype=np.uint8))
        _update_array(h, np.asarray(labels, dtype="<i4"))
    return h.hexdigest()


def read_meta(folder: Path) -> dict[str, Any]:
    """The cache's ``meta.json``; InputError if missing or of another schema."""
    return jsonio.read_json(folder / META, kind=CACHE_KIND, schema=CACHE_SCHEMA)


def try_read_meta(folder: Path) -> dict[str, Any] | None:
    """``meta.json`` if the cache is complete and readable, else None."""
    try:
        meta = read_meta(folder)
    except InputError:
        return None
    for split in meta.get("splits", {}):
        if not images_file(folder, split).is_file() or not labels_file(folder, split).is_file():
            return None
    return meta


def load_arrays(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images memmap, labels) of one split, read-only."""
    images = np.load(images_file(folder, split), mmap_mode="r")
    labels = np.load(labels_file(folder, split), mmap_mode="r")
    return images, labels


def digest_folder(folder: Path) -> str:
    """Recompute the digest of a published cache from its files."""
    meta = read_meta(folder)
    arrays = {split: load_arrays(folder, split) for split in meta["splits"]}
    return prepared_digest(meta["class_names"], arrays)


class CacheWriter:
    """Stage a prepared cache and publish it atomically (``with`` block; ``publish`` at the end).

    Use :meth:`images` to get a writable memmap per split, :meth:`labels` to store the
    labels, then :meth:`publish`. Leaving the block without publishing (an error) removes
    the staging folder and leaves any earlier cache as it was.
    """

    def __init__(self, name: str, image_size: int) -> None:
        self.name = name
        self.image_size = image_size
        self.final = cache_dir(name, image_size)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(
            tempfile.mkdtemp(prefix=f".{image_size}.staging-", dir=self.final.parent)
        )
        self._splits: dict[str, int] = {}
        self._published = False

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._published:
            shutil.rmtree(self.staging, ignore_errors=True)

    def images(self, split: str, count: int) -> np.memmap:
        """A zero-filled writable uint8 memmap N×S×S×3 for ``split``."""
        self._splits[split] = count
        return np.lib.format.open_memmap(
            images_file(self.staging, split),
            mode="w+",
            dtype=np.uint8,
            shape=(count, self.image_size, self.image_size, 3),
        )

    def create_images(self, split: str, count: int) -> Path:
        """Create the zero-filled images file of ``split`` for workers to fill (``r+``)."""
        out = self.images(split, count)
        del out
        return images_file(self.staging, split)

    def compact(self, split: str, keep: np.ndarray) -> int:
        """Drop the rows of ``split`` where ``keep`` is False (skipped corrupt files)."""
        src_path = images_file(self.staging, split)
        src = np.load(src_path, mmap_mode="r")
        kept = np.flatnonzero(keep)
        tmp = src_path.with_name(f".{src_path.name}.compact")
        dst = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(kept), *src.shape[1:])
        )
        step = 1024
        for start in range(0, len(kept), step):
            dst[start : start + step] = src[kept[start : start + step]]
        dst.flush()
        del dst, src
        os.replace(tmp, src_path)
        self._splits[split] = len(kept)
        return len(kept)

    def labels(self, split: str, labels: np.ndarray) -> None:
        np.save(labels_file(self.staging, split), np.asarray(labels, dtype=np.int32))

    def write_split(self, split: str, images: np.ndarray, labels: np.ndarray) -> None:
        """Store a split held in memory (images N×S×S×3 or N×S×S / N×S×S×1, replicated to RGB)."""
        images = to_rgb(np.asarray(images))
        expect = (self.image_size, self.image_size, 3)
        if images.dtype != np.uint8 or images.shape[1:] != expect:
            raise InputError(
                f"dataset {self.name!r} split {split!r}: expected uint8 images of shape "
                f"N×{self.image_size}×{self.image_size}×3, got {images.dtype} {images.shape}"
            )
        if len(labels) != len(images):
            raise InputError(
                f"dataset {self.name!r} split {split!r}: {len(images)} images but "
                f"{len(labels)} labels"
            )
        out = self.images(split, len(images))
        out[:] = images
        out.flush()
        del out
        self.labels(split, labels)

    def publish(
        self,
        class_names: tuple[str, ...] | list[str],
        extra: Mapping[str, Any] | None = None,
        check: Callable[[str], None] | None = None,
    ) -> tuple[Path, str]:
        """Digest the staged files, run ``check(digest)``, write meta.json, swap the folder in."""
        arrays = {split: load_arrays(self.staging, split) for split in self._splits}
        digest = prepared_digest(class_names, arrays)
        del arrays
        if check is not None:
            check(digest)
        meta = {
            "dataset": self.name,
            "image_size": self.image_size,
            "digest": digest,
            "class_names": list(class_names),
            "num_classes": len(class_names),
            "splits": dict(self._splits),
            "harness_version": __version__,
            **(extra or {}),
        }
        jsonio.write_json(self.staging / META, meta, kind=CACHE_KIND, schema=CACHE_SCHEMA)
        _swap_in(self.staging, self.final)
        self._published = True
        return self.final, digest


def _swap_in(staging: Path, final: Path) -> None:
    """Replace ``final`` by ``staging``; the old folder is moved aside first, then removed."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old / final.name)
    try:
        os.replace(staging, final)
    except BaseException:
        if old is not None:
            os.replace(old / final.name, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def to_rgb(images: np.ndarray) -> np.ndarray:
    """N×H×W or N×H×W×1 grayscale → N×H×W×3 by replication; RGB passes through."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim == 4 and images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images
