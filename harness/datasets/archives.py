"""Fetched archives and their extracted folders, per manifest entry.

``<archives_dir>/<filename>`` is the verified download (or copy of a local archive);
``<archives_dir>/extracted/<dataset>/`` its safely extracted content, with a small
record (``extracted/<dataset>.json``) tying it to the archive it came from (size, mtime
and hashes), so that a re-fetched archive is extracted again and a manifest whose pins
moved on no longer counts the old one as fetched.

A fetch publishes a new archive under its final name only once it has been verified
*and* extracted within the bounds of :mod:`.extract` (:func:`limits_for`): a refused
archive leaves nothing behind, and an earlier good archive and extraction stay as they
were. An archive already in place whose extraction is refused is recorded as
``refused``, which ``bench data list`` shows.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import jsonio, paths
from harness.datasets import extract
from harness.datasets.fetch import Pins, copy_local, download, part_path
from harness.datasets.hashing import FileDigest, hash_file, verify_file
from harness.errors import InputError, IntegrityError
from harness.manifest import DatasetEntry, FetchedSource, HttpsSource, LocalSource, WeightsEntry

EXTRACTED_KIND = "transfer-bench.extracted"
EXTRACTED_SCHEMA = 2
NOT_EXTRACTED = ("npz",)  # layouts read straight from the fetched file
ENV_MAX_BYTES = "BENCH_EXTRACT_MAX_BYTES"
ENV_MAX_RATIO = "BENCH_EXTRACT_MAX_RATIO"
ENV_MAX_MEMBERS = "BENCH_EXTRACT_MAX_MEMBERS"
DEFAULT_MAX_RATIO = 100.0
EXPANSION = 8  # default max_bytes: 8 × the declared archive size ...
SLACK_BYTES = 256 << 20  # ... + 256 MiB
MEMBER_SLACK = 1000  # default max_members: 2 × the declared images + 1000


def archive_path(source: FetchedSource) -> Path:
    return paths.archives_dir() / source.filename


def extracted_dir(name: str) -> Path:
    return paths.archives_dir() / "extracted" / name


def _record(name: str) -> Path:
    return paths.archives_dir() / "extracted" / f"{name}.json"


def shown(path: str | Path) -> str:
    """How an error names ``path``: ``member 'train/cat/x.png' of pets.zip`` for a file of an
    extracted archive (the name the user knows), any other path as it is."""
    try:
        rel = Path(path).relative_to(paths.archives_dir() / "extracted")
    except ValueError:
        return str(path)
    rec = _read_record(rel.parts[0]) if len(rel.parts) > 1 else None
    if rec is None or not rec.get("archive"):
        return str(path)
    return f"member {Path(*rel.parts[1:]).as_posix()!r} of {rec['archive']}"


def pins_of(source: FetchedSource) -> Pins:
    return Pins(size=source.size, sha256=source.sha256, md5=source.md5)


@contextlib.contextmanager
def lock(filename: str) -> Iterator[None]:
    """Serialise fetches and extractions of one archive across processes."""
    folder = paths.archives_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{filename}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def refuse_unpinned(name: str, source: FetchedSource, *, allow_unpinned: bool) -> None:
    if not source.pinned and not allow_unpinned:
        raise IntegrityError(
            f"{name!r} is unpinned (no sha256 or md5 in the manifest): fetch it with "
            f"--allow-unpinned, check it, then record its hash with `bench data pin {name}`"
        )


def _env_bound(var: str, kind: type) -> Any | None:
    raw = os.environ.get(var)
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise InputError(f"${var}={raw!r}: expected a number > 0")
    return value


def limits_for(entry: DatasetEntry, archive: Path) -> extract.Limits:
    """The extraction bounds of ``entry``: environment > manifest > derived default.

    Defaults: ``max_bytes`` = 8 × the declared archive size (the file's own size when
    unpinned) + 256 MiB; ``max_ratio`` = 100; ``max_members`` = 2 × the declared images
    + 1000. The manifest's ``layout.extract.{max_bytes,max_ratio,max_members}`` and the
    environment's ``BENCH_EXTRACT_MAX_{BYTES,RATIO,MEMBERS}`` replace them.
    """
    source = entry.source
    assert isinstance(source, HttpsSource | LocalSource)
    declared = source.size if source.size is not None else archive.stat().st_size
    bounds = entry.layout.get("extract") or {}
    where = f"datasets.{entry.name}.layout.extract"

    def pick(key: str, var: str, kind: type, default: Any, how: str) -> tuple[Any, str]:
        env = _env_bound(var, kind)
        if env is not None:
            return env, f"${var}"
        if bounds.get(key) is not None:
            return kind(bounds[key]), f"manifest {where}.{key}; ${var} overrides it"
        return default, f"default: {how}; raise it with {where}.{key} or ${var}"

    max_bytes, bytes_why = pick(
        "max_bytes",
        ENV_MAX_BYTES,
        int,
        EXPANSION * declared + SLACK_BYTES,
        f"{EXPANSION} × the declared size {declared:,} + {SLACK_BYTES >> 20} MiB",
    )
    max_ratio, ratio_why = pick(
        "max_ratio", ENV_MAX_RATIO, float, DEFAULT_MAX_RATIO, f"{DEFAULT_MAX_RATIO:g}"
    )
    images = sum(entry.splits.values())
    max_members, members_why = pick(
        "max_members",
        ENV_MAX_MEMBERS,
        int,
        2 * images + MEMBER_SLACK,
        f"2 × the {images:,} declared images + {MEMBER_SLACK}",
    )
    return extract.Limits(max_bytes, max_ratio, max_members, bytes_why, ratio_why, members_why)


# --- records ---------------------------------------------------------------------------


def _read_record(name: str) -> dict[str, Any] | None:
    try:
        return jsonio.read_json(_record(name), kind=EXTRACTED_KIND, schema=EXTRACTED_SCHEMA)
    except InputError:
        return None


def write_record(entry: DatasetEntry, archive: Path, state: str, **more: Any) -> None:
    """Tie ``archive`` (size, mtime, hashes) to the entry's extraction ``state``."""
    source = entry.source
    assert isinstance(source, HttpsSource | LocalSource)
    st = archive.stat()
    digest = more.pop("digest", None) or hash_file(archive)
    jsonio.write_json(
        _record(entry.name),
        {
            "archive": source.filename,
            "state": state,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sha256": digest.sha256,
            "md5": digest.md5,
            **more,
        },
        kind=EXTRACTED_KIND,
        schema=EXTRACTED_SCHEMA,
    )


def _record_matches(entry: DatasetEntry, rec: dict[str, Any]) -> bool:
    """The record describes the archive now on disk, and that archive is the pinned one."""
    source = entry.source
    assert isinstance(source, HttpsSource | LocalSource)
    archive = archive_path(source)
    if not archive.is_file() or rec.get("archive") != source.filename:
        return False
    st = archive.stat()
    if rec.get("size") != st.st_size or rec.get("mtime_ns") != st.st_mtime_ns:
        return False
    for key in ("sha256", "md5"):
        pin = getattr(source, key)
        if pin and rec.get(key) != pin:
            return False
    return source.size is None or source.size == st.st_size


def fetch_state(entry: DatasetEntry) -> str | None:
    """``"fetched"`` (verified and usable), ``"refused"`` (its extraction was refused),
    ``"downloaded"`` (a file is there but was never checked and extracted), or None."""
    source = entry.source
    assert isinstance(source, HttpsSource | LocalSource)
    if not archive_path(source).is_file():
        return None
    rec = _read_record(entry.name)
    if rec is None or not _record_matches(entry, rec):
        return "downloaded"
    if rec.get("state") == "refused":
        return "refused"
    if entry.layout.get("format") not in NOT_EXTRACTED and not extracted_dir(entry.name).is_dir():
        return "downloaded"
    return "fetched"


def is_extracted(entry: DatasetEntry) -> bool:
    """True when the archive on disk is verified and (if its layout needs it) extracted."""
    return fetch_state(entry) == "fetched"


# --- fetching and extracting -----------------------------------------------------------


def _staged(source: FetchedSource) -> Path:
    """Where a new, verified archive waits while it is extracted (then renamed into place)."""
    return paths.archives_dir() / f".{source.filename}.new"


def _extract_into_place(entry: DatasetEntry, archive: Path, ignored: list[str]) -> None:
    """Extract ``archive`` (bounded) into the entry's folder; the old folder stays on refusal.
    The platform metadata files left out go to ``ignored``."""
    folder = extracted_dir(entry.name)
    extract.clean_stale(folder)
    extract.safe_extract(archive, folder, limits_for(entry, archive), ignored=ignored)


@dataclass(frozen=True)
class Fetched:
    """What :func:`fetch_dataset` did."""

    path: Path
    digest: FileDigest | None  # None: the file was already there and verified
    extracted: Path | None  # the extracted folder (None for layouts read from the file)
    ignored: tuple[str, ...] = ()  # platform metadata files left out (__MACOSX/, ._*…)


def fetch_dataset(
    entry: DatasetEntry, *, from_path: Path | None = None, allow_unpinned: bool = False
) -> Fetched:
    """Make the dataset's archive present, verified and extracted (see the module doc)."""
    source = entry.source
    assert isinstance(source, HttpsSource | LocalSource)
    dest = archive_path(source)
    needs_extract = entry.layout.get("format") not in NOT_EXTRACTED
    folder = extracted_dir(entry.name) if needs_extract else None
    if isinstance(source, LocalSource) and from_path is None and not dest.is_file():
        raise InputError(
            f"{entry.name!r} comes from a local archive: run `bench data fetch {entry.name} "
            f"--from PATH/{source.filename}`"
        )
    refuse_unpinned(entry.name, source, allow_unpinned=allow_unpinned)
    ignored: list[str] = []
    with lock(source.filename):
        staged = _staged(source)
        staged.unlink(missing_ok=True)  # left by a killed fetch
        if from_path is None and dest.is_file():
            state = fetch_state(entry)
            if state == "fetched":
                return Fetched(dest, None, folder)
            if source.pinned or isinstance(source, LocalSource):
                try:
                    got = verify_file(dest, what=entry.name, **_pin_kwargs(source))
                except IntegrityError:
                    if isinstance(source, LocalSource):
                        raise
                else:
                    _extract_published(entry, dest, got, needs_extract, ignored)
                    return Fetched(dest, None, folder, tuple(ignored))
        what = f"{entry.name!r} ({source.filename})"
        part = part_path(dest)
        try:
            if from_path is not None:
                got = copy_local(
                    Path(from_path), staged, pins_of(source), what=what, part=part, ignored=ignored
                )
            else:
                assert isinstance(source, HttpsSource)
                bad = dest.with_name(dest.name + ".bad")
                got = download(source.url, staged, pins_of(source), what=what, part=part, bad=bad)
            if needs_extract:
                _extract_into_place(entry, staged, ignored)
            os.replace(staged, dest)
        finally:
            staged.unlink(missing_ok=True)
        write_record(entry, dest, "extracted" if needs_extract else "verified", digest=got)
        return Fetched(dest, got, folder, tuple(ignored))


def _extract_published(
    entry: DatasetEntry,
    archive: Path,
    digest: FileDigest,
    needs_extract: bool,
    ignored: list[str] | None = None,
) -> None:
    """Extract an archive already in place; a refusal is recorded (``bench data list``)."""
    if needs_extract:
        try:
            _extract_into_place(entry, archive, [] if ignored is None else ignored)
        except InputError as exc:
            write_record(entry, archive, "refused", digest=digest, reason=exc.message)
            raise
    write_record(entry, archive, "extracted" if needs_extract else "verified", digest=digest)


def fetch_file(
    entry: WeightsEntry,
    *,
    from_path: Path | None = None,
    allow_unpinned: bool = False,
) -> tuple[Path, FileDigest | None]:
    """Make a weights file present and verified; returns (path, digest or None if kept)."""
    source = entry.source
    assert isinstance(source, HttpsSource)
    dest = archive_path(source)
    refuse_unpinned(entry.name, source, allow_unpinned=allow_unpinned)
    what = f"{entry.name!r} ({source.filename})"
    with lock(source.filename):
        if from_path is None and dest.is_file() and source.pinned:
            try:
                verify_file(dest, what=what, **_pin_kwargs(source))
                return dest, None
            except IntegrityError:
                pass
        if from_path is not None:
            return dest, copy_local(Path(from_path), dest, pins_of(source), what=what)
        return dest, download(source.url, dest, pins_of(source), what=what)


def _pin_kwargs(source: FetchedSource) -> dict[str, Any]:
    return {"size": source.size, "sha256": source.sha256, "md5": source.md5}


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
    needs_extract = entry.layout.get("format") not in NOT_EXTRACTED
    if not is_extracted(entry):
        with lock(source.filename):
            if not is_extracted(entry):
                got = verify_file(
                    archive, what=f"dataset {entry.name!r} archive", **_pin_kwargs(source)
                )
                _extract_published(entry, archive, got, needs_extract)
    return extracted_dir(entry.name) if needs_extract else archive
