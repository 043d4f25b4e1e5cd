"""Build a prepared cache from a layout plan: decode + resize once, across worker processes.

Work is cut into chunks of files (or of in-memory images from an ``.npz``); each chunk
is decoded by :mod:`harness.datasets.decode` in a process pool (inline for one worker)
and written straight into the staging memmap. An undecodable file stops the build with
its name (as a member of its archive, :func:`.archives.shown`), unless ``skip_corrupt``:
then it is dropped and counted in ``meta.json`` (a decompression bomb stops it either
way). ``meta.json`` also counts, per conversion, how many images needed it
(``conversions``: EXIF orientation, grayscale, 16-bit, alpha…).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import PIL

from harness.datasets import archives, decode
from harness.datasets.cache import CacheWriter
from harness.datasets.layouts import ArraySplit, FileSplit, Plan
from harness.errors import InputError
from harness.manifest import DatasetEntry

Task = tuple[Callable[..., tuple], tuple[Any, ...], int]  # (function, args, image count)
Failure = decode.Failure


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _chunk(n: int, workers: int) -> int:
    return max(8, min(256, n // max(1, workers * 8)))


def _tasks(
    items: FileSplit | ArraySplit, out: Path, size: int, workers: int, stop_on_error: bool
) -> Iterator[Task]:
    step = _chunk(len(items), workers)
    if isinstance(items, FileSplit):
        files = [str(f) for f in items.files]
        for start in range(0, len(files), step):
            chunk = files[start : start + step]
            yield decode.decode_files, (str(out), start, chunk, size, stop_on_error), len(chunk)
        return
    with np.load(items.npz, allow_pickle=False) as archive:
        images = archive[items.images_key]
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(items):
        raise InputError(
            f"{items.npz}:{items.images_key}: expected {len(items)} uint8 images "
            f"(N×H×W or N×H×W×C), got {images.dtype} {images.shape}"
        )
    for start in range(0, len(images), step):
        chunk = images[start : start + step]
        yield decode.resize_rows, (str(out), start, chunk, size), len(chunk)


@contextlib.contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True, auto_refresh=False) as bar:
        task = bar.add_task(label, total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)
            bar.refresh()

        yield advance


def _stop(failures: list[Failure], stop_on_error: bool) -> bool:
    return bool(failures) and (stop_on_error or any(f[3] for f in failures))


def _run(
    tasks: Iterator[Task],
    pool: ProcessPoolExecutor | None,
    advance: Callable[[int], None],
    stop_on_error: bool,
    workers: int = 1,
) -> tuple[list[Failure], Counter[str]]:
    """Run the tasks (bounded in flight); returns failures (stopping at the first if asked,
    or at a fatal one) and the conversion counts."""
    failures: list[Failure] = []
    counts: Counter[str] = Counter()
    if pool is None:
        for fn, args, count in tasks:
            got, conv = fn(*args)
            failures += got
            counts += conv
            advance(count)
            if _stop(failures, stop_on_error):
                break
        return failures, counts
    pending: dict[Future, int] = {}
    limit = 4 * workers  # tasks in flight: keeps memory bounded for large npz inputs
    tasks = iter(tasks)
    exhausted = False
    while pending or not exhausted:
        while not exhausted and len(pending) < limit:
            try:
                fn, args, count = next(tasks)
            except StopIteration:
                exhausted = True
                break
            pending[pool.submit(fn, *args)] = count
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
            advance(pending.pop(fut))
            got, conv = fut.result()
            failures += got
            counts += conv
        if _stop(failures, stop_on_error):
            for fut in pending:
                fut.cancel()
            wait(pending)
            break
    return sorted(failures), counts


def _pool(workers: int) -> ProcessPoolExecutor | None:
    if workers <= 1:
        return None
    # fork: workers start in milliseconds with the decoder already imported, and no main
    # module is re-imported; the parent holds no threads then (the progress bar does not
    # auto-refresh), so forking is safe.
    ctx = multiprocessing.get_context("fork")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def build_cache(
    entry: DatasetEntry,
    plan: Plan,
    image_size: int,
    *,
    workers: int | None = None,
    skip_corrupt: bool = False,
    check: Callable[[DatasetEntry, int, str], None] | None = None,
) -> Path:
    """Decode every split of ``plan`` into a new cache and publish it; returns its folder."""
    workers = workers or default_workers()
    started = time.perf_counter()
    skipped: list[str] = []
    conversions: Counter[str] = Counter()
    pool = _pool(workers)
    try:
        with CacheWriter(entry.name, image_size) as writer:
            for split, items in plan.splits.items():
                n = len(items)
                out = writer.create_images(split, n)
                tasks = _tasks(items, out, image_size, workers, stop_on_error=not skip_corrupt)
                with _progress(n, f"{entry.name} {split} @{image_size}px") as advance:
                    failures, counts = _run(
                        tasks, pool, advance, stop_on_error=not skip_corrupt, workers=workers
                    )
                conversions += counts
                labels = items.labels
                fatal = [f for f in failures if f[3]]
                if fatal:
                    _, path, reason, _ = fatal[0]
                    raise InputError(
                        f"dataset {entry.name!r}: {archives.shown(path)}: {reason}; remove or "
                        "replace the file"
                    )
                if failures and not skip_corrupt:
                    _, path, reason, _ = failures[0]
                    raise InputError(
                        f"dataset {entry.name!r}: cannot decode {archives.shown(path)}: "
                        f"{reason}; remove or replace the file, or pass --skip-corrupt"
                    )
                if failures:
                    keep = np.ones(n, dtype=bool)
                    keep[[row for row, _, _, _ in failures]] = False
                    if writer.compact(split, keep) == 0:
                        raise InputError(
                            f"dataset {entry.name!r} split {split!r}: every image is corrupt"
                        )
                    labels = labels[keep]
                    skipped += [path for _, path, _, _ in failures]
                writer.labels(split, labels)
            extra = {
                "fingerprint": entry.fingerprint,
                "source": {"type": entry.source.type},
                "skipped_corrupt": len(skipped),
                "skipped_files": skipped[:100],
                "conversions": dict(sorted(conversions.items())),
                "pillow": PIL.__version__,
                "workers": workers,
                "seconds": round(time.perf_counter() - started, 3),
            }
            folder, _ = writer.publish(
                plan.class_names,
                extra=extra,
                check=(lambda digest: check(entry, image_size, digest)) if check else None,
            )
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return folder
