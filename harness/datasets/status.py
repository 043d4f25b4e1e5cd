"""What state each manifest entry is in: unpinned, pinned, downloaded, refused, fetched, prepared.

A dataset is ``fetched`` only when its archive is the pinned one and was verified and
extracted within bounds; an archive whose extraction was refused is ``refused``; a file
that is merely present (copied by hand, or fetched by an older harness) is ``downloaded``
until ``bench data fetch`` checks and extracts it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from harness import paths
from harness.datasets import archives, cache
from harness.datasets.weights import weights_path
from harness.manifest import (
    DatasetEntry,
    DerivedSource,
    HttpsSource,
    LocalSource,
    Manifest,
    SyntheticSource,
    WeightsEntry,
)


@dataclass(frozen=True)
class EntryStatus:
    """One row of ``bench data list``."""

    name: str
    kind: str  # "dataset" | "weights"
    source: str  # https | local | file | synthetic | derived
    status: str  # unpinned | pinned | downloaded | refused | fetched | prepared
    pinned: bool
    fetched: bool
    prepared: tuple[int, ...]
    description: str

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["prepared"] = list(self.prepared)
        return out


def prepared_sizes(entry: DatasetEntry) -> tuple[int, ...]:
    """Image sizes with a complete cache built from this manifest entry."""
    folder = paths.prepared_dir() / entry.name
    if not folder.is_dir():
        return ()
    sizes = []
    for sub in folder.iterdir():
        if sub.name.isdigit():
            meta = cache.try_read_meta(sub)
            if meta is not None and meta.get("fingerprint") == entry.fingerprint:
                sizes.append(int(sub.name))
    return tuple(sorted(sizes))


def _dataset_pinned_state(entry: DatasetEntry, manifest: Manifest) -> tuple[bool, str | None]:
    """(pinned, fetch state of the archive: see :func:`archives.fetch_state`)."""
    source = entry.source
    if isinstance(source, DerivedSource):
        return _dataset_pinned_state(manifest.dataset(source.parent), manifest)
    if isinstance(source, SyntheticSource):
        return bool(entry.prepared), None
    assert isinstance(source, HttpsSource | LocalSource)
    return source.pinned, archives.fetch_state(entry)


def _status(pinned: bool, state: str | None, prepared: tuple[int, ...]) -> str:
    if prepared:
        return "prepared"
    if state:
        return state
    return "pinned" if pinned else "unpinned"


def dataset_status(entry: DatasetEntry, manifest: Manifest) -> EntryStatus:
    pinned, state = _dataset_pinned_state(entry, manifest)
    prepared = prepared_sizes(entry)
    return EntryStatus(
        name=entry.name,
        kind="dataset",
        source=entry.source.type,
        status=_status(pinned, state, prepared),
        pinned=pinned,
        fetched=state == "fetched",
        prepared=prepared,
        description=entry.description,
    )


def weights_status(entry: WeightsEntry) -> EntryStatus:
    pinned = bool(entry.sha256)
    fetched = weights_path(entry).is_file()
    return EntryStatus(
        name=entry.name,
        kind="weights",
        source=entry.source.type,
        status=_status(pinned, "fetched" if fetched else None, ()),
        pinned=pinned,
        fetched=fetched,
        prepared=(),
        description=entry.description,
    )


def all_statuses(manifest: Manifest) -> list[EntryStatus]:
    """Every dataset, then every weights entry, in manifest order."""
    rows = [dataset_status(e, manifest) for e in manifest.datasets.values()]
    rows += [weights_status(e) for e in manifest.weights.values()]
    return rows
