"""A folder of images as a reproducible tar stream, so a folder can be pinned like an archive.

``bench data add NAME --from FOLDER`` (and ``bench data fetch NAME --from FOLDER``) store a
folder as ``<archives>/<NAME>.tar``. The tar holds only what decides its content, so the
same files give the same bytes, and the same sha256, on every machine and every day:
members in sorted order, regular files (symlinks are followed), mode 0644/0755, owner 0,
modification time 0, GNU format. Hidden files and folders (a leading ``.``) are left out,
as the layout readers ignore them, and so is platform metadata (``__MACOSX/``,
``Thumbs.db``, ``desktop.ini``…, :mod:`.platform_meta`): Windows Explorer writing a
``Thumbs.db`` into the folder does not change the packed bytes.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import Protocol

from harness.datasets.platform_meta import is_platform_metadata
from harness.errors import InputError


class Writable(Protocol):
    def write(self, data: bytes) -> object: ...


def _members(folder: Path, ignored: list[str]) -> list[tuple[str, Path, bool]]:
    """(name in the tar, path on disk, is a folder) in sorted order, hidden entries and
    platform metadata left out; the platform metadata files left out go to ``ignored``."""
    out: list[tuple[str, Path, bool]] = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        rel = Path(root).relative_to(folder)
        if is_platform_metadata(rel):  # walked only to count its files
            ignored += [(rel / f).as_posix() for f in sorted(files)]
            continue
        ignored += [(rel / f).as_posix() for f in sorted(files) if is_platform_metadata(f)]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for d in dirs:
            if not is_platform_metadata(d):
                out.append(((rel / d).as_posix(), Path(root) / d, True))
        for f in sorted(files):
            if not f.startswith(".") and not is_platform_metadata(f):
                out.append(((rel / f).as_posix(), Path(root) / f, False))
    return sorted(out)


def pack_folder(folder: Path, out: Writable, *, ignored: list[str] | None = None) -> int:
    """Write ``folder`` as a tar stream to ``out``; returns the number of files packed.

    The platform metadata files left out (relative names) are appended to ``ignored``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    left_out: list[str] = []
    files = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
        for name, path, is_dir in _members(folder, left_out):
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if is_dir:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            try:
                st = path.stat()
            except OSError as exc:
                raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
            if not stat.S_ISREG(st.st_mode):
                raise InputError(f"{path}: not a regular file; remove it from {folder}")
            info.mode = 0o644
            info.size = st.st_size
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
            files += 1
    if ignored is not None:
        ignored += left_out
    return files
