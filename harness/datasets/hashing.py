"""File hashes and the size/hash check every fetched or shipped file goes through.

A mismatch is an :class:`~harness.errors.IntegrityError` that states expected vs got
(tensorflow-datasets style); md5 is accepted where it is all a publisher gives.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from harness.errors import IntegrityError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileDigest:
    """Size and hashes of one file."""

    size: int
    sha256: str
    md5: str


def hash_file(path: Path) -> FileDigest:
    """Read ``path`` once and return its size, sha256 and md5."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return FileDigest(size=size, sha256=sha.hexdigest(), md5=md5.hexdigest())


def mismatch(
    got: FileDigest, *, size: int | None, sha256: str | None, md5: str | None
) -> str | None:
    """A 'what differs: expected X, got Y' text, or None when everything pinned matches."""
    if size is not None and got.size != size:
        return f"size mismatch: expected {size} bytes, got {got.size}"
    if sha256 is not None and got.sha256 != sha256:
        return f"sha256 mismatch: expected {sha256}, got {got.sha256}"
    if md5 is not None and got.md5 != md5:
        return f"md5 mismatch: expected {md5}, got {got.md5}"
    return None


def verify_file(
    path: Path,
    *,
    what: str,
    size: int | None,
    sha256: str | None,
    md5: str | None = None,
    hint: str = "",
) -> FileDigest:
    """Hash ``path`` and raise IntegrityError naming ``what`` if it differs from the pins."""
    got = hash_file(path)
    problem = mismatch(got, size=size, sha256=sha256, md5=md5)
    if problem:
        raise IntegrityError(f"{what} ({path}): {problem}{'; ' + hint if hint else ''}")
    return got
