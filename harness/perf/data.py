"""Data-side figures: the loader at 224 px on one core against memcpy, and prepare against
plain Pillow. Also the material both need (shared with ``benchmarks/bench_data.py``):
photo-like JPEG files with an EXIF block as cameras write it, and a 224 px prepared cache.
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 224
BATCH = 32


def photo_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour gradients with a little noise: compresses and decodes like a photo."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3)
    slope = rng.uniform(-0.4, 0.4, (2, 3))
    img = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    img += rng.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_jpegs(folder: Path, n: int, *, seed: int = 0) -> list[Path]:
    """``n`` CUB-like JPEG files (500×375, quality 90, EXIF: orientation 1, make, model)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = 1  # orientation: upright (what most camera files say)
    exif[0x010F] = "Camera maker"
    exif[0x0110] = "Model 1"
    files = []
    for i in range(n):
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(photo_like(rng, 375, 500)).save(path, "JPEG", quality=90, exif=exif)
        files.append(path)
    return files


def prepare_inputs(files: list[Path]) -> tuple[Any, Any]:
    """(manifest entry, layout plan) that make :func:`harness.datasets.build.build_cache`
    prepare ``files`` as one class of a dataset named "bench"."""
    from harness.datasets.layouts import FileSplit, Plan
    from harness.manifest import DatasetEntry, LocalSource

    entry = DatasetEntry(
        name="bench",
        source=LocalSource(filename="bench.tar"),
        class_names=("a",),
        num_classes=1,
        channels=3,
        splits={"train": len(files)},
        prepared={},
        layout={"format": "image-folders"},
    )
    plan = Plan(("a",), {"train": FileSplit(tuple(files), np.zeros(len(files), np.int32))})
    return entry, plan


def write_cache(name: str, n: int, size: int = SIZE, *, classes: int = 10, seed: int = 1) -> str:
    """A prepared cache of ``n`` random uint8 images under ``$BENCH_DATA_DIR`` (train split)."""
    from harness.datasets import cache

    rng = np.random.default_rng(seed)
    with cache.CacheWriter(name, size) as writer:
        out = writer.images("train", n)
        for start in range(0, n, 128):
            k = min(128, n - start)
            out[start : start + k] = rng.integers(0, 256, (k, size, size, 3), dtype=np.uint8)
        out.flush()
        del out
        writer.labels("train", rng.integers(0, classes, n).astype(np.int32))
        writer.publish(tuple(str(i) for i in range(classes)))
    return name


def cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (robust to a busy machine)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def memcpy_pass(src: np.ndarray, dst: np.ndarray) -> None:
    """numpy copy of the same bytes, batch by batch, in order, into a reused buffer: the
    ceiling for a loader that hands out batches (no gather, no shuffle)."""
    b = len(dst)
    for start in range(0, len(src) - b + 1, b):
        np.copyto(dst, src[start : start + b])


@contextlib.contextmanager
def one_core() -> Iterator[int | None]:
    """Pin the calling thread to one core while inside (its first allowed one)."""
    try:
        before = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not Linux
        yield None
        return
    core = min(before)
    os.sched_setaffinity(0, {core})
    try:
        yield core
    finally:
        os.sched_setaffinity(0, before)


def measure_loader(name: str, *, rounds: int = 9) -> dict[str, Any]:
    """Images per core-second of one shuffled pass at 224 px, batch 32, from the page cache.

    Two readers of the same cache, interleaved with a memcpy pass of the same bytes, on one
    pinned core: the streaming reader training uses (:func:`harness.cell.streaming.batches`,
    ``preadv`` into fresh batches) and the memory-mapped gather
    (:func:`harness.datasets.loader.iterate_batches`). Each pass is timed in CPU seconds of
    the thread (``time.thread_time``: what the core spent, whatever else the machine runs)
    and in wall seconds; the best round of each counts.
    """
    from harness.cell import streaming
    from harness.datasets.loader import iterate_batches, open_split

    split = open_split(name, "train", SIZE)
    src = np.asarray(split.images).view(np.ndarray)
    n = len(split)
    with open(split.images.filename, "rb") as fh:  # page the file in: measure memory, not disk
        while fh.read(64 << 20):
            pass
    src.sum(dtype=np.uint64)
    dst = np.empty((BATCH, *src.shape[1:]), dtype=src.dtype)

    def stream_pass() -> None:
        for _ in streaming.batches(split, BATCH, seed=0):
            pass

    def mmap_pass() -> None:
        for _ in iterate_batches(split, BATCH, seed=0):
            pass

    passes: dict[str, Callable[[], None]] = {
        "stream": stream_pass,
        "mmap": mmap_pass,
        "memcpy": lambda: memcpy_pass(src, dst),
    }
    cpu: dict[str, list[float]] = {k: [] for k in passes}
    wall: dict[str, list[float]] = {k: [] for k in passes}
    with one_core() as core:
        for fn in passes.values():  # warm-up
            fn()
        for _ in range(rounds):
            for key, fn in passes.items():
                c0, w0 = time.thread_time(), time.perf_counter()
                fn()
                cpu[key].append(max(time.thread_time() - c0, 1e-9))
                wall[key].append(time.perf_counter() - w0)
    row = dst[0].nbytes
    memcpy_bytes = (n // BATCH) * BATCH * row
    memcpy_rate = memcpy_bytes / min(cpu["memcpy"])
    rate = {k: n / min(v) for k, v in cpu.items() if k != "memcpy"}
    return {
        "setting": f"{n} images 224×224×3 uint8, batch {BATCH}, shuffled, one pass, "
        f"core {core}, page cache warm, best of {rounds} interleaved rounds, per CPU second",
        "images_per_s": rate["stream"],
        "fraction_of_memcpy": rate["stream"] * row / memcpy_rate,
        "mmap_gather_images_per_s": rate["mmap"],
        "mmap_fraction_of_memcpy": rate["mmap"] * row / memcpy_rate,
        "memcpy_gb_per_s": memcpy_rate / 1e9,
        "wall_images_per_s": n / min(wall["stream"]),
        "wall_median_images_per_s": n / statistics.median(wall["stream"]),
    }


def measure_prepare(folder: Path, n: int, *, rounds: int = 3) -> dict[str, Any]:
    """Harness prepare (decode, checks, resize, write, digest; one worker) against a plain
    Pillow decode + resize of the same JPEGs, per CPU second (one core's work), interleaved."""
    from PIL import Image

    from harness.datasets.build import build_cache

    files = write_jpegs(folder, n)
    entry, plan = prepare_inputs(files)

    def harness_prepare() -> None:
        build_cache(entry, plan, SIZE, workers=1)

    def plain() -> None:
        for path in files:
            with Image.open(path) as im:
                np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))

    cpu: dict[str, list[float]] = {"harness": [], "pillow": []}
    wall: dict[str, list[float]] = {"harness": [], "pillow": []}
    harness_prepare()  # warm-up (imports, first cache folder)
    for _ in range(rounds):
        for key, fn in (("harness", harness_prepare), ("pillow", plain)):
            c0, w0 = cpu_seconds(), time.perf_counter()
            fn()
            cpu[key].append(cpu_seconds() - c0)
            wall[key].append(time.perf_counter() - w0)
    h, p = n / min(cpu["harness"]), n / min(cpu["pillow"])
    return {
        "setting": f"{n} JPEG 500×375 (EXIF) -> 224×224 RGB, one worker, best of {rounds} "
        "interleaved rounds, images per CPU second",
        "images_per_s_per_core": h,
        "pillow_images_per_s_per_core": p,
        "ratio_to_pillow": h / p,
        "wall_images_per_s": n / min(wall["harness"]),
    }
