"""Re-hash what is on disk against the manifest: archives, weights files, prepared caches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness import paths
from harness.datasets import archives, cache
from harness.datasets.hashing import hash_file, mismatch
from harness.datasets.weights import weights_path
from harness.errors import InputError
from harness.manifest import (
    DatasetEntry,
    FileSource,
    HttpsSource,
    LocalSource,
    Manifest,
    WeightsEntry,
)


@dataclass(frozen=True)
class Check:
    """One verified thing: ``ok`` False means a mismatch (or a missing/unpinned file)."""

    name: str
    what: str
    ok: bool
    detail: str


def _file_check(
    name: str,
    what: str,
    path: Path,
    *,
    size: int | None,
    sha256: str | None,
    md5: str | None,
    allow_unpinned: bool,
) -> Check:
    got = hash_file(path)
    if not (sha256 or md5):
        return Check(
            name,
            what,
            allow_unpinned,
            f"unpinned (sha256 {got.sha256}): run `bench data pin {name}`",
        )
    problem = mismatch(got, size=size, sha256=sha256, md5=md5)
    if problem:
        return Check(name, what, False, f"{path}: {problem}")
    return Check(name, what, True, f"sha256 {got.sha256}")


def verify_dataset(
    entry: DatasetEntry, *, required: bool, allow_unpinned: bool = False
) -> list[Check]:
    """Checks of the dataset's archive (if fetched) and of every prepared cache present."""
    checks: list[Check] = []
    source = entry.source
    if isinstance(source, HttpsSource | LocalSource):
        path = archives.archive_path(source)
        if path.is_file():
            checks.append(
                _file_check(
                    entry.name,
                    f"archive {source.filename}",
                    path,
                    size=source.size,
                    sha256=source.sha256,
                    md5=source.md5,
                    allow_unpinned=allow_unpinned,
                )
            )
        elif required:
            checks.append(Check(entry.name, "archive", False, f"{path} is not fetched"))
    root = paths.prepared_dir() / entry.name
    sizes = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
    for size in sizes:
        checks.append(_cache_check(entry, size))
    if required and not checks:
        checks.append(Check(entry.name, "dataset", False, "nothing fetched or prepared"))
    return checks


def _cache_check(entry: DatasetEntry, size: int) -> Check:
    folder = cache.cache_dir(entry.name, size)
    what = f"prepared {size}px"
    if cache.try_read_meta(folder) is None:
        return Check(entry.name, what, False, f"{folder} is incomplete: prepare it again")
    try:  # what the pre-flight checks, with every byte re-hashed
        meta = cache.verify_cache(entry.name, size, rehash=True)
    except InputError as exc:
        return Check(entry.name, what, False, exc.message)
    digest = meta["digest"]
    pinned = entry.pinned_digest(size)
    if pinned and pinned != digest:
        return Check(
            entry.name, what, False, f"digest mismatch: expected {pinned} (manifest), got {digest}"
        )
    if meta.get("fingerprint") != entry.fingerprint:
        return Check(entry.name, what, True, f"digest {digest} (stale: the manifest entry changed)")
    return Check(entry.name, what, True, f"digest {digest}{'' if pinned else ' (unpinned)'}")


def verify_weights(
    entry: WeightsEntry, *, required: bool, allow_unpinned: bool = False
) -> list[Check]:
    path = weights_path(entry)
    if not path.is_file():
        if required or isinstance(entry.source, FileSource):
            return [Check(entry.name, "weights", False, f"{path} is missing")]
        return []
    return [
        _file_check(
            entry.name,
            f"weights {path.name}",
            path,
            size=entry.size,
            sha256=entry.sha256,
            md5=getattr(entry.source, "md5", None),
            allow_unpinned=allow_unpinned,
        )
    ]


def verify(
    manifest: Manifest, names: list[str] | None, *, allow_unpinned: bool = False
) -> list[Check]:
    """Checks for ``names`` (each must have something to check) or for everything present."""
    required = bool(names)
    checks: list[Check] = []
    for name in names or [*manifest.datasets, *manifest.weights]:
        entry = manifest.entry(name)
        if isinstance(entry, DatasetEntry):
            checks += verify_dataset(entry, required=required, allow_unpinned=allow_unpinned)
        else:
            checks += verify_weights(entry, required=required, allow_unpinned=allow_unpinned)
    return checks
