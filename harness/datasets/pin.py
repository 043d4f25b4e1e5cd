"""``bench data pin``: record in the manifest the hash of what was fetched or prepared.

Archives and weights files get ``sha256`` and ``size`` in their source; prepared caches
get ``prepared.<size>.digest``. A file that contradicts an existing pin (md5, size or
sha256) is refused rather than re-pinned; the manifest is rewritten atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.datasets import archives, cache
from harness.datasets.hashing import hash_file, mismatch
from harness.datasets.status import prepared_sizes
from harness.datasets.weights import weights_path
from harness.errors import InputError, IntegrityError
from harness.manifest import (
    MANIFEST,
    DatasetEntry,
    FileSource,
    HttpsSource,
    LocalSource,
    SyntheticSource,
    WeightsEntry,
    load_manifest,
)

Update = tuple[tuple[str, ...], Any]  # (key path in the manifest JSON, value)


def _pin_file(name: str, path: Path, source: Any, keys: tuple[str, ...]) -> list[Update]:
    if not path.is_file():
        raise InputError(
            f"{name!r}: nothing to pin, {path} is missing: run `bench data fetch {name}"
            f"{' --allow-unpinned' if not source.pinned else ''}` first"
        )
    got = hash_file(path)
    overwrite = isinstance(source, FileSource)  # a project-built file may be re-pinned
    problem = mismatch(
        got,
        size=None if overwrite else source.size,
        sha256=None if overwrite else source.sha256,
        md5=getattr(source, "md5", None),
    )
    if problem:
        raise IntegrityError(f"{name!r}: refusing to pin {path}: {problem}")
    return [((*keys, "source", "sha256"), got.sha256), ((*keys, "source", "size"), got.size)]


def _pin_prepared(entry: DatasetEntry, sizes: list[int]) -> list[Update]:
    updates: list[Update] = []
    for size in sizes:
        if isinstance(entry.source, SyntheticSource):
            from harness.datasets.prepare import prepare_synthetic

            with cache.lock(entry.name, size):  # regenerate: never pin a stale cache
                folder = prepare_synthetic(entry, size, check=False)
        else:
            folder = cache.cache_dir(entry.name, size)
            meta = cache.try_read_meta(folder)
            if meta is None or meta.get("fingerprint") != entry.fingerprint:
                raise InputError(
                    f"dataset {entry.name!r} is not prepared at {size} px: run `bench data "
                    f"prepare {entry.name} --image-size {size}` first"
                )
        digest = cache.digest_folder(folder)
        if digest != cache.read_meta(folder)["digest"]:
            raise IntegrityError(
                f"{folder} changed since it was prepared: prepare {entry.name!r} again"
            )
        updates.append((("datasets", entry.name, "prepared", str(size)), {"digest": digest}))
    return updates


def plan_pin(name: str, image_size: int | None = None) -> list[Update]:
    """The manifest updates that pin ``name`` (and its prepared cache at ``image_size``)."""
    manifest = load_manifest()
    entry = manifest.entry(name)
    if isinstance(entry, WeightsEntry):
        return _pin_file(name, weights_path(entry), entry.source, ("weights", name))
    updates: list[Update] = []
    if isinstance(entry.source, HttpsSource | LocalSource):
        path = archives.archive_path(entry.source)
        updates += _pin_file(name, path, entry.source, ("datasets", name))
        sizes = [image_size] if image_size else []
    else:
        pinned = [int(size) for size in entry.prepared]
        sizes = [image_size] if image_size else sorted({*prepared_sizes(entry), *pinned})
        if not sizes:
            raise InputError(f"dataset {name!r} has no prepared cache to pin: pass --image-size N")
    return updates + _pin_prepared(entry, sizes)


def apply_updates(updates: list[Update]) -> Path:
    """Write ``updates`` into the manifest (re-read just now), atomically; re-validate it."""
    path = load_manifest().path
    raw = MANIFEST.read(path)
    for keys, value in updates:
        node = raw
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    MANIFEST.write(path, raw)
    load_manifest(path)
    return path


def pin(name: str, image_size: int | None = None) -> list[Update]:
    """Pin ``name``; returns what was recorded."""
    updates = plan_pin(name, image_size)
    apply_updates(updates)
    return updates
