"""Fetched archives and their extracted folders, per manifest entry.

``<archives_dir>/<filename>`` is the verified download (or copy of a local archive);
``<archives_dir>/extracted/<dataset>/`` its safely extracted content, with a small
record (``extracted/<dataset>.json``) tying it to the archive it came from so that a
re-fetched archive is extracted again.
"""

from __future__ import annotations

from pathlib import Path

from harness import jsonio, paths
from harness.datasets import extract
from harness.datasets.fetch import Pins, copy_local, download
from harness.datasets.hashing import FileDigest, verify_file
from harness.errors import InputError, IntegrityError
from harness.manifest import DatasetEntry, FetchedSource, HttpsSource, LocalSource, WeightsEntry

EXTRACTED_KIND = "transfer-bench.extracted"
EXTRACTED_SCHEMA = 1
NOT_EXTRACTED = ("npz",)  # layouts read straight from the fetched file


def archive_path(source: FetchedSource) -> Path:
    return paths.archives_dir() / source.filename


def extracted_dir(name: str) -> Path:
    return paths.archives_dir() / "extracted" / name


def _record(name: str) -> Path:
    return paths.archives_dir() / "extracted" / f"{name}.json"


def pins_of(source: FetchedSource) -> Pins:
    return Pins(size=source.size, sha256=source.sha256, md5=source.md5)


def refuse_unpinned(name: str, source: FetchedSource, *, allow_unpinned: bool) -> None:
    if not source.pinned and not allow_unpinned:
        raise IntegrityError(
            f"{name!r} is unpinned (no sha256 or md5 in the manifest): fetch it with "
            f"--allow-unpinned, check it, then record its hash with `bench data pin {name}`"
        )


def fetch_file(
    entry: DatasetEntry | WeightsEntry,
    *,
    from_path: Path | None = None,
    allow_unpinned: bool = False,
) -> tuple[Path, FileDigest | None]:
    """Make the entry's file present and verified; returns (path, digest or None if kept)."""
    source = entry.source
    assert isinstance(source, HttpsSource | LocalSource)
    dest = archive_path(source)
    if isinstance(source, LocalSource) and from_path is None and not dest.is_file():
        raise InputError(
            f"{entry.name!r} comes from a local archive: run `bench data fetch {entry.name} "
            f"--from PATH/{source.filename}`"
        )
    refuse_unpinned(entry.name, source, allow_unpinned=allow_unpinned)
    what = f"{entry.name!r} ({source.filename})"
    if from_path is not None:
        return dest, copy_local(Path(from_path), dest, pins_of(source), what=what)
    if isinstance(source, LocalSource):
        return dest, verify_file(dest, what=what, **_pin_kwargs(source))
    return dest, download(source.url, dest, pins_of(source), what=what)


def _pin_kwargs(source: FetchedSource) -> dict[str, object]:
    return {"size": source.size, "sha256": source.sha256, "md5": source.md5}


def is_extracted(entry: DatasetEntry) -> bool:
    """True when the extracted folder matches the archive now on disk."""
    source = entry.source
    assert isinstance(source, HttpsSource | LocalSource)
    archive = archive_path(source)
    folder = extracted_dir(entry.name)
    if not archive.is_file() or not folder.is_dir():
        return False
    try:
        rec = jsonio.read_json(_record(entry.name), kind=EXTRACTED_KIND, schema=EXTRACTED_SCHEMA)
    except InputError:
        return False
    st = archive.stat()
    return rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns


def extract_archive(entry: DatasetEntry) -> Path:
    """Safely extract the entry's fetched archive (unless its layout reads the file directly)."""
    source = entry.source
    assert isinstance(source, HttpsSource | LocalSource)
    archive = archive_path(source)
    folder = extracted_dir(entry.name)
    extract.safe_extract(archive, folder)
    st = archive.stat()
    jsonio.write_json(
        _record(entry.name),
        {"archive": source.filename, "size": st.st_size, "mtime_ns": st.st_mtime_ns},
        kind=EXTRACTED_KIND,
        schema=EXTRACTED_SCHEMA,
    )
    return folder


def source_root(entry: DatasetEntry, *, allow_unpinned: bool = False) -> Path:
    """What a layout reader reads: the extracted folder (extracting if needed) or the file.

    The archive must have been fetched; it is re-verified against its pins before a
    (re-)extraction, so a cache is never built from an unverified file.
    """
    source = entry.source
    assert isinstance(source, HttpsSource | LocalSource)
    refuse_unpinned(entry.name, source, allow_unpinned=allow_unpinned)
    archive = archive_path(source)
    if not archive.is_file():
        how = "--from PATH/" + source.filename if isinstance(source, LocalSource) else ""
        raise InputError(
            f"dataset {entry.name!r} is not fetched ({archive} is missing): run "
            f"`bench data fetch {entry.name}{' ' + how if how else ''}`"
        )
    if entry.layout.get("format") in NOT_EXTRACTED:
        verify_file(archive, what=f"dataset {entry.name!r} archive", **_pin_kwargs(source))
        return archive
    if not is_extracted(entry):
        verify_file(archive, what=f"dataset {entry.name!r} archive", **_pin_kwargs(source))
        extract_archive(entry)
    return extracted_dir(entry.name)
