"""File-system failures as one-line input errors: the one place that maps them.

A full disk, a read-only file system, a path under a regular file, a missing permission
or a file that is not UTF-8 are not bugs in the harness: they are conditions of the
machine or of a file the user gave. :func:`fs_error` turns the ``OSError`` (or
``UnicodeDecodeError``) into a :class:`~harness.errors.FileSystemError` / InputError
that names the path, says what went wrong in words and what to do (exit 2).
:func:`guard` does it around a block; :func:`read_text` / :func:`read_bytes` are the
readers the harness's parsers use.
"""

from __future__ import annotations

import errno as errno_mod
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.errors import FileSystemError, InputError

# errno -> (what happened, what to do)
_HINTS: dict[int, tuple[str, str]] = {
    errno_mod.ENOSPC: ("no space left on the device", "free some space there and try again"),
    errno_mod.EDQUOT: ("disk quota exceeded", "free some space there and try again"),
    errno_mod.EROFS: ("read-only file system", "choose a writable folder"),
    errno_mod.EACCES: ("permission denied", "check the owner and permissions of the path"),
    errno_mod.EPERM: ("operation not permitted", "check the owner and permissions of the path"),
    errno_mod.ENOTDIR: (
        "a part of the path is a regular file, not a folder",
        "choose a path whose parents are folders",
    ),
    errno_mod.EISDIR: ("is a folder, not a file", "give the path of a file"),
    errno_mod.ENOENT: ("no such file or folder", "check the path"),
    errno_mod.EEXIST: ("exists and is not a folder", "choose a path whose parents are folders"),
    errno_mod.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
    errno_mod.ELOOP: ("too many levels of symbolic links", "check the path's links"),
    errno_mod.EIO: ("input/output error", "check the device (dmesg) and try again"),
    errno_mod.EMFILE: ("too many open files", "raise the open-file limit (ulimit -n)"),
}


def fs_error(
    exc: OSError | UnicodeDecodeError, path: str | Path | None = None, action: str = "access"
) -> InputError:
    """The one-line error for ``exc`` on ``path`` while trying to ``action`` it.

    ``path`` defaults to the exception's own filename. A ``UnicodeDecodeError`` becomes
    an InputError saying where the first non-UTF-8 byte is.
    """
    if isinstance(exc, UnicodeDecodeError):
        where = path if path is not None else "file"
        bad = exc.object[exc.start : exc.start + 1].hex() if exc.object else "?"
        return InputError(
            f"{where}: not UTF-8 text (byte 0x{bad} at offset {exc.start}); "
            "save it as UTF-8 and try again"
        )
    named = exc.filename if exc.filename is not None else path
    shown = str(path if path is not None else named if named is not None else "?")
    what, todo = _HINTS.get(
        exc.errno or -1, (exc.strerror or type(exc).__name__, "check the path and the device")
    )
    if exc.filename is not None and path is not None and _is_parent(exc.filename, path):
        what = f"{exc.filename}: {what}"  # e.g. a parent that is a regular file
    return FileSystemError(f"{shown}: cannot {action}: {what}; {todo}", path=shown, errno=exc.errno)


def _is_parent(folder: str | bytes | Path, path: str | Path) -> bool:
    """Whether ``folder`` is one of the parents of ``path`` (then it is worth naming; a
    sibling, such as the temporary file of an atomic write, is not)."""
    try:
        return Path(os.fsdecode(folder)) in Path(path).parents
    except (TypeError, ValueError):
        return False


@contextmanager
def guard(path: str | Path, action: str = "access") -> Iterator[None]:
    """Turn an ``OSError`` or ``UnicodeDecodeError`` inside the block into :func:`fs_error`."""
    try:
        yield
    except (OSError, UnicodeDecodeError) as exc:
        raise fs_error(exc, path, action) from exc


def read_bytes(path: str | Path) -> bytes:
    """The bytes of ``path``; a one-line InputError when it cannot be read."""
    with guard(path, "read"):
        return Path(path).read_bytes()


def read_text(path: str | Path) -> str:
    """The UTF-8 text of ``path``; a one-line InputError when unreadable or not UTF-8."""
    data = read_bytes(path)
    with guard(path, "read"):
        return data.decode("utf-8")
