"""Prepared caches: :func:`prepare` builds one, :func:`require_prepared` opens one.

``bench data prepare`` and the pre-flight of ``bench all`` (in the parent process, before
any cell starts) build caches with :func:`prepare`: a synthetic dataset is generated, a
fetched one decoded and resized. A cell only ever opens a cache with
:func:`require_prepared`, which never builds. Either way the cache's digest is checked
against the manifest's pin for that image size. Every dataset must have the splits a cell
trains and validates on (:data:`RUNNER_SPLITS`), which is checked before anything is built.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness.datasets import cache
from harness.errors import InputError, IntegrityError
from harness.manifest import (
    DatasetEntry,
    DerivedSource,
    HttpsSource,
    LocalSource,
    Manifest,
    SyntheticSource,
    load_manifest,
)

RUNNER_SPLITS = ("train", "val")  # what every cell reads; "test" is optional


def check_runner_splits(entry: DatasetEntry) -> None:
    """Refuse a dataset without the splits a cell needs, saying how to get them."""
    missing = [s for s in RUNNER_SPLITS if s not in entry.splits]
    if not missing:
        return
    how = (
        'add "val_from_train": {"fraction": 0.1} to its layout (a seeded, per-class carve)'
        if entry.layout.get("format") == "image-folders" and "train" in entry.splits
        else "add the split to its manifest entry"
    )
    raise InputError(
        f"dataset {entry.name!r} has no {' or '.join(map(repr, missing))} split (it has "
        f"{', '.join(entry.splits)}), and every cell trains on 'train' and validates on "
        f"'val': {how}"
    )


def check_pin(entry: DatasetEntry, image_size: int, digest: str) -> None:
    """Refuse a prepared digest that differs from the one pinned in the manifest."""
    pinned = entry.pinned_digest(image_size)
    if pinned is None or pinned == digest:
        return
    if isinstance(entry.source, SyntheticSource):
        why = (
            f"the generator {entry.source.generator!r} changed; if that is intended, re-pin "
            f"with `bench data pin {entry.name} --image-size {image_size}`"
        )
    else:
        why = (
            "the archive, its reader or the image resizer changed; check with "
            f"`bench data verify {entry.name}`"
        )
    raise IntegrityError(
        f"dataset {entry.name!r} at {image_size} px: prepared digest mismatch: expected "
        f"{pinned} (manifest datasets.{entry.name}.prepared.{image_size}.digest), got "
        f"{digest}; {why}"
    )


def check_source_pinned(entry: DatasetEntry, manifest: Manifest, *, allow_unpinned: bool) -> None:
    """Refuse a dataset whose fetched archive (or its parent's) has no pinned hash."""
    if allow_unpinned:
        return
    source = entry.source
    if isinstance(source, DerivedSource):
        check_source_pinned(manifest.dataset(source.parent), manifest, allow_unpinned=False)
        return
    if isinstance(source, HttpsSource | LocalSource) and not source.pinned:
        raise IntegrityError(
            f"dataset {entry.name!r} is unpinned (no sha256 in {manifest.path}): run "
            f"`bench data pin {entry.name}` after checking the fetched file, or pass "
            "--allow-unpinned"
        )


def cached(entry: DatasetEntry, image_size: int) -> dict[str, Any] | None:
    """The meta.json of a complete cache built from this very manifest entry, else None."""
    meta = cache.try_read_meta(cache.cache_dir(entry.name, image_size))
    if meta is None or meta.get("fingerprint") != entry.fingerprint:
        return None
    return meta


def ensure_prepared(name: str, image_size: int, *, allow_unpinned: bool = False) -> Path:
    """The prepared folder of dataset ``name`` at ``image_size`` px, verified against its pin.

    Synthetic datasets are generated and cached when missing; other datasets must have
    been prepared with ``bench data prepare`` (the error says which command to run).
    """
    if image_size < 1:
        raise InputError(f"image size must be >= 1, got {image_size}")
    manifest = load_manifest()
    entry = manifest.dataset(name)
    check_source_pinned(entry, manifest, allow_unpinned=allow_unpinned)
    meta = cached(entry, image_size)
    if meta is None and isinstance(entry.source, SyntheticSource):
        with cache.lock(name, image_size):
            meta = cached(entry, image_size)  # another process may have just built it
            if meta is None:
                return prepare_synthetic(entry, image_size)
    if meta is not None:
        check_pin(entry, image_size, str(meta["digest"]))
        return cache.cache_dir(name, image_size)
    folder = cache.cache_dir(name, image_size)
    state = (
        "has a stale cache (its manifest entry changed)" if folder.exists() else "is not prepared"
    )
    raise InputError(
        f"dataset {name!r} {state} at {image_size} px: run `bench data fetch "
        f"{_fetch_name(entry, manifest)}` if not yet fetched, then "
        f"`bench data prepare {name} --image-size {image_size}`"
    )


def require_prepared(name: str, image_size: int, *, allow_unpinned: bool = False) -> Path:
    """The prepared folder of ``name`` at ``image_size`` px, verified; never builds one.

    Cells call this: the pre-flight of ``bench all`` prepares every dataset before any
    cell starts, so a missing cache here means the cell was started some other way.
    """
    manifest = load_manifest()
    entry = manifest.dataset(name)
    check_source_pinned(entry, manifest, allow_unpinned=allow_unpinned)
    meta = cached(entry, image_size)
    if meta is None:
        folder = cache.cache_dir(name, image_size)
        state = "has a stale cache" if folder.exists() else "is not prepared"
        raise InputError(
            f"dataset {name!r} {state} at {image_size} px ({folder}); cells never prepare "
            f"data: run `bench data prepare {name} --image-size {image_size}` (bench all "
            "does it before any cell starts)"
        )
    check_pin(entry, image_size, str(meta["digest"]))
    return cache.cache_dir(name, image_size)


def _fetch_name(entry: DatasetEntry, manifest: Manifest) -> str:
    while isinstance(entry.source, DerivedSource):
        entry = manifest.dataset(entry.source.parent)
    if isinstance(entry.source, LocalSource):
        return f"{entry.name} --from PATH/{entry.source.filename}"
    return entry.name


def prepare(
    name: str,
    image_size: int,
    *,
    workers: int | None = None,
    skip_corrupt: bool = False,
    allow_unpinned: bool = False,
) -> Path:
    """(Re)build the prepared cache of ``name`` at ``image_size`` px; returns its folder."""
    if image_size < 1:
        raise InputError(f"image size must be >= 1, got {image_size}")
    manifest = load_manifest()
    entry = manifest.dataset(name)
    check_runner_splits(entry)
    if isinstance(entry.source, SyntheticSource):
        with cache.lock(name, image_size):
            return prepare_synthetic(entry, image_size)
    check_source_pinned(entry, manifest, allow_unpinned=allow_unpinned)
    from harness.datasets import build, layouts

    plan = layouts.read_plan(entry, manifest, allow_unpinned=allow_unpinned)
    with cache.lock(name, image_size):
        return build.build_cache(
            entry, plan, image_size, workers=workers, skip_corrupt=skip_corrupt, check=check_pin
        )


def prepare_synthetic(entry: DatasetEntry, image_size: int, *, check: bool = True) -> Path:
    """Generate a synthetic dataset, check its digest against the pin, publish the cache.

    ``check=False`` (used by ``bench data pin``) publishes whatever the generator makes.
    """
    from harness.datasets import synthetic  # written alongside; imported only when needed

    source = entry.source
    assert isinstance(source, SyntheticSource)
    started = time.perf_counter()
    arrays = synthetic.generate(source, dict(entry.splits), image_size)
    class_names = tuple(synthetic.class_names(source))
    _check_generated(entry, arrays, class_names)
    with cache.CacheWriter(entry.name, image_size) as writer:
        for split in entry.splits:
            images, labels = arrays[split]
            writer.write_split(split, images, labels)
        del arrays
        folder, _ = writer.publish(
            class_names,
            extra={
                "fingerprint": entry.fingerprint,
                "source": {"type": "synthetic", "generator": source.generator, "seed": source.seed},
                "skipped_corrupt": 0,
                "seconds": round(time.perf_counter() - started, 3),
            },
            check=(lambda digest: check_pin(entry, image_size, digest)) if check else None,
        )
    return folder


def _check_generated(
    entry: DatasetEntry, arrays: dict[str, Any], class_names: tuple[str, ...]
) -> None:
    """The generator must produce the manifest's splits, counts and classes."""
    if entry.class_names is not None and class_names != entry.class_names:
        raise InputError(
            f"dataset {entry.name!r}: the generator's class names {list(class_names)[:5]}… "
            f"disagree with the manifest's {list(entry.class_names)[:5]}…"
        )
    if len(class_names) != entry.num_classes:
        raise InputError(
            f"dataset {entry.name!r}: the generator gives {len(class_names)} classes, the "
            f"manifest says {entry.num_classes}"
        )
    for split, count in entry.splits.items():
        if split not in arrays:
            raise InputError(f"dataset {entry.name!r}: the generator gave no split {split!r}")
        got = len(arrays[split][0])
        if got != count:
            raise InputError(
                f"dataset {entry.name!r} split {split!r}: the generator gave {got} images, "
                f"the manifest says {count}"
            )
