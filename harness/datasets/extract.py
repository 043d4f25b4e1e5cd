"""Safe, bounded extraction of tar and zip archives into a folder, published atomically.

Every member is checked before anything is written: absolute names, ``..`` components,
links that point outside the folder, device or fifo files and sparse files are refused
with one line naming the archive and the member. So are archives that would expand
beyond their :class:`Limits`, judged first from the archive's own headers and then again
from the bytes actually written (headers can lie):

- more members than ``max_members``;
- more uncompressed bytes than ``max_bytes``;
- an uncompressed/compressed ratio above ``max_ratio`` (judged once the expanded size
  passes ``RATIO_FLOOR``, so a small archive of text files is not refused);
- more bytes than the free space of the target's file system, less ``DISK_RESERVE``.

Extraction goes to a hidden staging folder that is renamed into place only when
complete, so a refused or broken archive leaves nothing: no extracted files, and any
earlier extraction in place as it was.

Platform metadata (``__MACOSX/``, ``._*``, ``.DS_Store``, ``Thumbs.db``…, see
:mod:`.platform_meta`) is checked for safety like any member but never written, and not
counted against the bounds of what is written (up to ``max_members`` of it is read): a
zip made by macOS Finder holds one such member for every file.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from harness.datasets.platform_meta import is_platform_metadata
from harness.errors import InputError

RATIO_FLOOR = 16 << 20  # the compression ratio is judged once the expansion passes 16 MiB
DISK_RESERVE = 64 << 20  # free space left over after an extraction
_CHUNK = 1 << 20


class UnsafeArchiveError(InputError):
    """An archive member that would write outside the target or create a special file."""


class ExtractionRefused(InputError):
    """An archive that would expand beyond a bound (size, ratio, members, free disk)."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one extraction; each ``*_why`` says where the bound came from (for errors)."""

    max_bytes: int
    max_ratio: float
    max_members: int
    bytes_why: str = "default"
    ratio_why: str = "default"
    members_why: str = "default"


def _refuse(archive: Path, member: str, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"archive {archive}: member {member!r} {why}; refusing to extract")


def _check_name(archive: Path, name: str) -> None:
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or ":" in name[:3]:
        raise _refuse(archive, name, "has an absolute path")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise _refuse(archive, name, "contains '..'")


def _inside(target: str) -> bool:
    """True when a normalised relative POSIX path stays inside the extraction root."""
    norm = posixpath.normpath(target)
    return not (norm.startswith("/") or norm == ".." or norm.startswith("../"))


def _check_tar_member(archive: Path, m: tarfile.TarInfo) -> None:
    _check_name(archive, m.name)
    if m.ischr() or m.isblk() or m.isfifo() or m.isdev():
        raise _refuse(archive, m.name, "is a device or fifo file")
    if m.issparse():
        raise _refuse(archive, m.name, "is a sparse file (its size on disk is not its size)")
    if m.issym():
        if m.linkname.startswith("/") or not _inside(
            posixpath.join(posixpath.dirname(m.name), m.linkname)
        ):
            raise _refuse(archive, m.name, f"is a symlink pointing outside ({m.linkname!r})")
    elif m.islnk() and (m.linkname.startswith("/") or not _inside(m.linkname)):
        raise _refuse(archive, m.name, f"is a hard link pointing outside ({m.linkname!r})")
    elif not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
        raise _refuse(archive, m.name, "is not a regular file, folder or link")


class _Budget:
    """Running totals against the limits; raises ExtractionRefused naming the bound."""

    def __init__(self, archive: Path, limits: Limits) -> None:
        self.archive = archive
        self.limits = limits
        self.size = max(1, archive.stat().st_size)
        self.members = 0
        self.metadata = 0  # platform metadata members: read, never written
        self.bytes = 0

    def member(self, *, metadata: bool = False) -> None:
        if metadata:
            self.metadata += 1
        else:
            self.members += 1
        lim = self.limits
        if max(self.members, self.metadata) > lim.max_members:
            what = "platform metadata members" if self.metadata > lim.max_members else "members"
            raise ExtractionRefused(
                f"archive {self.archive}: more than {lim.max_members:,} {what}, the bound "
                f"({lim.members_why}); refusing to extract"
            )

    def add(self, n: int, *, written: bool = False) -> None:
        self.bytes += n
        lim = self.limits
        what = "wrote" if written else "expands to"
        if self.bytes > lim.max_bytes:
            raise ExtractionRefused(
                f"archive {self.archive}: {what} more than {lim.max_bytes:,} bytes, the bound "
                f"({lim.bytes_why}); refusing to extract"
            )
        if self.bytes > RATIO_FLOOR and self.bytes > lim.max_ratio * self.size:
            raise ExtractionRefused(
                f"archive {self.archive}: {what} more than {self.bytes:,} bytes from "
                f"{self.size:,} (ratio above {lim.max_ratio:g}, the bound: {lim.ratio_why}); "
                "refusing to extract"
            )


def _scan_tar(archive: Path, tar: tarfile.TarFile, limits: Limits) -> list[tarfile.TarInfo]:
    """Every member, checked for safety and against the limits as the headers are read."""
    budget = _Budget(archive, limits)
    members = []
    while (m := tar.next()) is not None:
        skip = is_platform_metadata(m.name)
        budget.member(metadata=skip)
        _check_tar_member(archive, m)
        if m.isfile() and not skip:
            budget.add(m.size)
        members.append(m)
    return members


def check_tar(archive: Path, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The members of ``tar`` if every one is safe, else UnsafeArchiveError (no bounds)."""
    unbounded = Limits(max_bytes=1 << 62, max_ratio=float("inf"), max_members=1 << 62)
    return _scan_tar(archive, tar, unbounded)


def _zip_mode(info: zipfile.ZipInfo) -> int:
    return info.external_attr >> 16


def check_zip(
    archive: Path, zf: zipfile.ZipFile, limits: Limits | None = None
) -> list[zipfile.ZipInfo]:
    """The members of ``zf`` if every one is safe (and, with ``limits``, within them)."""
    infos = zf.infolist()
    budget = _Budget(archive, limits) if limits else None
    for info in infos:
        skip = is_platform_metadata(info.filename)
        if budget:
            budget.member(metadata=skip)
        _check_name(archive, info.filename)
        mode = _zip_mode(info)
        if stat.S_ISLNK(mode):
            target = zf.read(info).decode(errors="replace")
            if target.startswith("/") or not _inside(
                posixpath.join(posixpath.dirname(info.filename), target)
            ):
                raise _refuse(archive, info.filename, f"is a symlink pointing outside ({target!r})")
            raise _refuse(archive, info.filename, "is a symlink (not supported in zip archives)")
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise _refuse(archive, info.filename, "is a device or fifo file")
        if budget and not info.is_dir() and not skip:
            budget.add(info.file_size)
            _check_member_ratio(archive, info, budget.limits)
    return infos


def _check_member_ratio(archive: Path, info: zipfile.ZipInfo, limits: Limits) -> None:
    """One zip member's own ratio (its header gives both sizes)."""
    if info.file_size > RATIO_FLOOR and info.file_size > limits.max_ratio * max(
        1, info.compress_size
    ):
        raise ExtractionRefused(
            f"archive {archive}: member {info.filename!r} expands to {info.file_size:,} bytes "
            f"from {info.compress_size:,} (ratio above {limits.max_ratio:g}, the bound: "
            f"{limits.ratio_why}); refusing to extract"
        )


def archive_format(path: Path) -> str:
    """``"zip"`` or ``"tar"`` by content (not by name); InputError otherwise."""
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        pass
    raise InputError(f"archive {path}: not a tar or zip archive")


def default_limits(archive: Path) -> Limits:
    """Bounds for an archive nothing is declared about (``bench data add`` inspecting it)."""
    size = archive.stat().st_size
    return Limits(
        max_bytes=8 * size + (256 << 20),
        max_ratio=100.0,
        max_members=1_000_000,
        bytes_why="default: 8 × the archive's size + 256 MiB; BENCH_EXTRACT_MAX_BYTES raises it",
        ratio_why="default; BENCH_EXTRACT_MAX_RATIO raises it",
        members_why="default; BENCH_EXTRACT_MAX_MEMBERS raises it",
    )


def _check_disk(archive: Path, folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed + DISK_RESERVE > free:
        raise ExtractionRefused(
            f"archive {archive}: needs {needed:,} bytes to extract (+{DISK_RESERVE >> 20} MiB "
            f"reserve), {free:,} free in {folder}; free some space or point BENCH_DATA_DIR "
            "at a larger disk"
        )


def _extract_tar(archive: Path, staging: Path, limits: Limits, ignored: list[str]) -> None:
    with tarfile.open(archive) as tar:
        members = _scan_tar(archive, tar, limits)
        kept = [m for m in members if not is_platform_metadata(m.name)]
        ignored += [m.name for m in members if is_platform_metadata(m.name) and not m.isdir()]
        _check_disk(archive, staging, sum(m.size for m in kept if m.isfile()))
        written = _Budget(archive, limits)
        for m in kept:
            tar.extract(m, staging, filter="data", set_attrs=not m.isdir())
            if m.isfile():
                # Count what is on disk, not what the header said.
                written.add((staging / m.name).stat().st_size, written=True)


def _zip_target(staging: Path, info: zipfile.ZipInfo) -> Path:
    parts = [p for p in PurePosixPath(info.filename).parts if p not in ("", ".")]
    return staging.joinpath(*parts) if parts else staging


def _extract_zip(archive: Path, staging: Path, limits: Limits, ignored: list[str]) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = check_zip(archive, zf, limits)
        kept = [i for i in infos if not is_platform_metadata(i.filename)]
        ignored += [
            i.filename for i in infos if not i.is_dir() and is_platform_metadata(i.filename)
        ]
        _check_disk(archive, staging, sum(i.file_size for i in kept if not i.is_dir()))
        written = _Budget(archive, limits)
        for info in kept:
            target = _zip_target(staging, info)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            got = 0
            with zf.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(_CHUNK):
                    got += len(chunk)
                    if got > info.file_size:
                        raise ExtractionRefused(
                            f"archive {archive}: member {info.filename!r} expands beyond its "
                            f"declared {info.file_size:,} bytes (a lying header); refusing to "
                            "extract"
                        )
                    written.add(len(chunk), written=True)
                    out.write(chunk)


def clean_stale(dest: Path) -> None:
    """Remove staging folders that a killed extraction into ``dest`` left behind.

    Call it only while holding the lock that serialises extractions into ``dest``.
    """
    for stale in dest.parent.glob(f".{dest.name}.extract-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in dest.parent.glob(f".{dest.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


def safe_extract(
    archive: Path,
    dest: Path,
    limits: Limits | None = None,
    *,
    ignored: list[str] | None = None,
) -> Path:
    """Extract ``archive`` (tar, tar.gz/bz2/xz or zip) into ``dest``, replacing it atomically.

    ``limits`` default to :func:`default_limits` (bounds derived from the archive's size).
    The names of the platform metadata files left out are appended to ``ignored``.
    """
    archive, dest = Path(archive), Path(dest)
    fmt = archive_format(archive)
    limits = limits or default_limits(archive)
    left_out: list[str] = []
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        try:
            if fmt == "tar":
                _extract_tar(archive, staging, limits, left_out)
            else:
                _extract_zip(archive, staging, limits, left_out)
        except tarfile.FilterError as exc:
            raise InputError(f"archive {archive}: {exc}; refusing to extract") from None
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
            raise InputError(f"archive {archive}: damaged or truncated ({exc})") from None
        except OSError as exc:
            raise InputError(
                f"archive {archive}: cannot extract into {dest.parent}: "
                f"{exc.strerror or exc}; nothing was kept"
            ) from None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old / dest.name)
            os.replace(staging, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if ignored is not None:
        ignored += left_out
    return dest
