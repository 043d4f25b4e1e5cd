"""The prepared cache: one folder per dataset and image size, published atomically.

Layout: ``<prepared_dir>/<dataset>/<size>/`` holding ``<split>.images.npy`` (uint8,
N×H×W×3, always RGB), ``<split>.labels.npy`` (int32, N) and ``meta.json`` (kind
``transfer-bench.prepared``, schema 1) with the class names, split counts and the cache's
digest. A :class:`CacheWriter` fills a hidden staging folder next to the final one and
swaps it in only when everything is written, so a failure never touches an earlier cache.

Before cells read a cache, the pre-flight checks it with :func:`verify_cache` (once per
run and size; ``bench data verify`` too). Every time, the cheap part: each ``.npy`` header
against ``meta.json`` (dtype, shape, order), each file's length (a truncated file), the
labels (in range, at least two classes, every class in every split). The digest of every
byte only when a file's signature (size, mtime, ctime, inode) differs from the one
``verified.json`` recorded at the last verification (or at publication): a flipped byte is
caught without hashing gigabytes on every run.
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
from harness.errors import InputError, IntegrityError

CACHE_KIND = "transfer-bench.prepared"
CACHE_SCHEMA = 1
META = "meta.json"
VERIFIED = "verified.json"
VERIFIED_KIND = "transfer-bench.prepared-verified"
VERIFIED_SCHEMA = 1
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


# --- verification ------------------------------------------------------------------------


def _files(folder: Path, meta: Mapping[str, Any]) -> list[Path]:
    """meta.json and every split's images and labels files."""
    out = [folder / META]
    for split in meta["splits"]:
        out += [images_file(folder, split), labels_file(folder, split)]
    return out


def signature(folder: Path, meta: Mapping[str, Any]) -> dict[str, list[int]]:
    """File name → [size, mtime_ns, ctime_ns, inode] of the cache's files (a change in any
    of them, even a byte rewritten and its mtime set back, changes the ctime)."""
    sig = {}
    for path in _files(folder, meta):
        st = path.stat()
        sig[path.name] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    return sig


def _record_verified(folder: Path, digest: str, sig: dict[str, list[int]]) -> None:
    """Write ``verified.json``; best effort (a read-only data folder verifies every run)."""
    with contextlib.suppress(InputError, OSError):
        jsonio.write_json(
            folder / VERIFIED,
            {"digest": digest, "files": sig},
            kind=VERIFIED_KIND,
            schema=VERIFIED_SCHEMA,
        )


def _recorded(folder: Path) -> dict[str, Any] | None:
    try:
        rec = jsonio.read_json(folder / VERIFIED, kind=VERIFIED_KIND, schema=VERIFIED_SCHEMA)
    except (InputError, OSError):
        return None
    return {"digest": rec.get("digest"), "files": rec.get("files")}


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, fortran order, data offset) from a ``.npy`` file's header."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        return tuple(shape), dtype, bool(fortran), fh.tell()


def _check_meta(folder: Path, meta: Mapping[str, Any], image_size: int) -> None:
    names, splits = meta.get("class_names"), meta.get("splits")
    ok = (
        isinstance(names, list)
        and all(isinstance(n, str) for n in names)
        and meta.get("num_classes") == len(names)
        and meta.get("image_size") == image_size
        and isinstance(meta.get("digest"), str)
        and isinstance(splits, dict)
        and all(type(n) is int and n >= 0 for n in splits.values())
    )
    if not ok:
        raise IntegrityError(f"{folder / META}: malformed (class names, splits, size or digest)")


def _check_npy(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """The file's header says ``dtype`` and ``shape`` (C order) and its length fits it."""
    if not path.is_file():
        raise IntegrityError(f"{path} is missing")
    try:
        got_shape, got_dtype, fortran, offset = _npy_header(path)
    except (ValueError, OSError, SyntaxError) as exc:
        raise IntegrityError(f"{path}: not a readable .npy file ({exc})") from None
    if got_dtype != dtype or got_shape != shape or fortran:
        order = ", Fortran order" if fortran else ""
        raise IntegrityError(
            f"{path}: its header says {got_dtype.str} {list(got_shape)}{order}, the cache's "
            f"meta.json says {dtype.str} {list(shape)}"
        )
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size != need:
        how = "truncated" if size < need else "longer than its header says"
        raise IntegrityError(f"{path} is {how}: {size} bytes, its header needs {need}")


def _check_classes(meta: Mapping[str, Any], labels: Mapping[str, np.ndarray]) -> str | None:
    """Why the labels cannot train a classifier: fewer than two classes, or a class that
    some split lacks (None: every split holds every class)."""
    names = list(meta["class_names"])
    k = len(names)
    counts = {split: np.bincount(lab, minlength=k) for split, lab in labels.items()}
    total = sum(counts.values(), np.zeros(k, np.int64))
    found = [names[i] for i in np.flatnonzero(total)]
    if len(found) < 2:
        return (
            f"its labels hold {len(found)} class(es) ({', '.join(map(repr, found))}), and a "
            "classifier needs at least 2 (with one, its loss is 0 from the start and it "
            "learns nothing)"
        )
    for split, c in counts.items():
        missing = [names[i] for i in np.flatnonzero(c == 0)]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            return (
                f"split {split!r} has no image of class(es) {', '.join(map(repr, missing[:3]))}"
                f"{more}: every split must hold every class, or train and val measure "
                "different tasks"
            )
    return None


def check_files(folder: Path, meta: Mapping[str, Any], image_size: int) -> dict[str, np.ndarray]:
    """The cheap checks of a cache against its ``meta.json``: every header, every file's
    length, every label in range. Returns the labels per split; raises IntegrityError."""
    _check_meta(folder, meta, image_size)
    k = len(meta["class_names"])
    labels = {}
    for split, n in meta["splits"].items():
        _check_npy(images_file(folder, split), np.dtype(np.uint8), (n, image_size, image_size, 3))
        _check_npy(labels_file(folder, split), np.dtype("<i4"), (n,))
        lab = np.load(labels_file(folder, split))
        bad = lab[(lab < 0) | (lab >= k)]
        if bad.size:
            raise IntegrityError(
                f"{labels_file(folder, split)}: label {int(bad[0])} is outside 0…{k - 1} (the "
                f"cache has {k} classes)"
            )
        labels[split] = lab
    return labels


def verify_cache(name: str, image_size: int, *, rehash: bool = False) -> dict[str, Any]:
    """The ``meta.json`` of the cache of ``name`` at ``image_size`` px, verified.

    Runs :func:`check_files`; recomputes the digest of every byte and compares it with the
    one ``meta.json`` records, unless ``verified.json`` shows the files unchanged since that
    was last done (``rehash`` forces it); then checks the classes (at least two, every one
    in every split). Raises IntegrityError when the files differ from what was written (and
    says how to rebuild), InputError when the data itself cannot train a classifier.
    """
    folder = cache_dir(name, image_size)
    where = f"dataset {name!r} at {image_size} px"
    rebuild = f"rebuild it: `bench data prepare {name} --image-size {image_size}`"
    try:
        meta = read_meta(folder)
        labels = check_files(folder, meta, image_size)
        sig = signature(folder, meta)
        known = not rehash and _recorded(folder) == {"digest": meta["digest"], "files": sig}
        if not known:
            digest = digest_folder(folder)
            if digest != meta["digest"]:
                raise IntegrityError(
                    f"{folder} changed since it was prepared: expected digest "
                    f"{meta['digest']} (its meta.json), got {digest}"
                )
    except InputError as exc:
        raise type(exc)(f"{where}: {exc.message}; {rebuild}") from None
    except OSError as exc:
        raise IntegrityError(
            f"{where}: cannot read {exc.filename or folder}: {exc.strerror or exc}; {rebuild}"
        ) from None
    if not known:
        _record_verified(folder, digest, sig)
    why = _check_classes(meta, labels)
    if why:
        raise InputError(
            f"{where}: {folder}: {why}; fix the dataset's source, then `bench data prepare "
            f"{name} --image-size {image_size}`"
        )
    return meta


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
        # Digested just now: record the files' signatures (kept by the folder's rename).
        _record_verified(self.staging, digest, signature(self.staging, meta))
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
