"""Safe extraction of tar and zip archives into a folder, published atomically.

Every member is checked before anything is written: absolute names, ``..`` components,
links that point outside the folder, and device or fifo files are refused with one line
naming the archive and the member. Extraction goes to a hidden staging folder that is
renamed into place only when complete, so a refused or broken archive leaves nothing.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from harness.errors import InputError


class UnsafeArchiveError(InputError):
    """An archive member that would write outside the target or create a special file."""


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


def check_tar(archive: Path, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The members of ``tar`` if every one is safe, else UnsafeArchiveError."""
    members = tar.getmembers()
    for m in members:
        _check_name(archive, m.name)
        if m.ischr() or m.isblk() or m.isfifo() or m.isdev():
            raise _refuse(archive, m.name, "is a device or fifo file")
        if m.issym():
            if m.linkname.startswith("/") or not _inside(
                posixpath.join(posixpath.dirname(m.name), m.linkname)
            ):
                raise _refuse(archive, m.name, f"is a symlink pointing outside ({m.linkname!r})")
        elif m.islnk() and (m.linkname.startswith("/") or not _inside(m.linkname)):
            raise _refuse(archive, m.name, f"is a hard link pointing outside ({m.linkname!r})")
        elif not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise _refuse(archive, m.name, "is not a regular file, folder or link")
    return members


def check_zip(archive: Path, zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The members of ``zf`` if every one is safe, else UnsafeArchiveError."""
    infos = zf.infolist()
    for info in infos:
        _check_name(archive, info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            target = zf.read(info).decode(errors="replace")
            if target.startswith("/") or not _inside(
                posixpath.join(posixpath.dirname(info.filename), target)
            ):
                raise _refuse(archive, info.filename, f"is a symlink pointing outside ({target!r})")
            raise _refuse(archive, info.filename, "is a symlink (not supported in zip archives)")
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise _refuse(archive, info.filename, "is a device or fifo file")
    return infos


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


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` (tar, tar.gz/bz2/xz or zip) into ``dest``, replacing it atomically."""
    archive, dest = Path(archive), Path(dest)
    fmt = archive_format(archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        try:
            if fmt == "tar":
                with tarfile.open(archive) as tar:
                    members = check_tar(archive, tar)
                    tar.extractall(staging, members=members, filter="data")
            else:
                with zipfile.ZipFile(archive) as zf:
                    check_zip(archive, zf)
                    zf.extractall(staging)
        except tarfile.FilterError as exc:
            raise InputError(f"archive {archive}: {exc}; refusing to extract") from None
        except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
            raise InputError(f"archive {archive}: damaged or truncated ({exc})") from None
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
    return dest
