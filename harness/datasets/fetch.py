"""Getting one file into the archives folder: an https download or a copy of a local file.

The bytes go to ``.<name>.part`` in the destination folder while being hashed; only when
size and hashes match the pins is the file renamed into place (tensorflow-datasets
style). A hash mismatch keeps the download as ``<name>.bad`` for inspection and says
expected vs got; an HTTP error or a dropped connection is one line and leaves no file.

A ``.part`` that a killed fetch left behind (the process could not clean up) is resumed by
the next download of a pinned file with an HTTP ``Range`` request, and the whole file is
verified against the pins at the end; a server that ignores ``Range``, an unpinned file, a
``.part`` longer than the pinned size, or a resumed file that fails verification start
over from the first byte. Callers serialise fetches of one file (see ``archives.lock``).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from harness import __version__
from harness.datasets.hashing import FileDigest, mismatch
from harness.errors import InputError, IntegrityError

_CHUNK = 1 << 20
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Pins:
    """What a file must be: any of size, sha256, md5 (None = not pinned)."""

    size: int | None = None
    sha256: str | None = None
    md5: str | None = None


def part_path(dest: Path) -> Path:
    """Where the bytes of ``dest`` accumulate until verified (fixed, so a fetch can resume)."""
    return dest.with_name(f".{dest.name}.part")


class _Sink:
    """The ``.part`` file that hashes what is written to it; ``resume`` keeps its bytes."""

    def __init__(self, path: Path, *, resume: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.sha = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0
        if resume and path.is_file():
            with open(path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    self.sha.update(chunk)
                    self.md5.update(chunk)
                    self.size += len(chunk)
            self.fh = open(path, "ab")  # noqa: SIM115 - closed by close() or discard()
        else:
            self.fh = open(path, "wb")  # noqa: SIM115

    def restart(self) -> None:
        """Drop what was kept: start again from the first byte."""
        self.fh.close()
        self.fh = open(self.path, "wb")  # noqa: SIM115
        self.sha = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def write(self, chunk: bytes) -> None:
        try:
            self.fh.write(chunk)
        except OSError as exc:  # disk full, quota: not the network's fault
            raise InputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.sha.update(chunk)
        self.md5.update(chunk)
        self.size += len(chunk)

    def digest(self) -> FileDigest:
        """Size and hashes of everything written so far."""
        return FileDigest(size=self.size, sha256=self.sha.hexdigest(), md5=self.md5.hexdigest())

    def close(self) -> FileDigest:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        return self.digest()

    def keep(self) -> None:
        """Leave the bytes on disk for a later resume."""
        with contextlib.suppress(OSError):
            self.fh.close()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()
        self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def _progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on a terminal (advance(n) callback); silent otherwise."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _copy_stream(src: BinaryIO, sink: _Sink, advance: Callable[[int], None]) -> None:
    while chunk := src.read(_CHUNK):
        sink.write(chunk)
        advance(len(chunk))


def _publish(
    sink: _Sink, dest: Path, pins: Pins, what: str, *, keep_bad: Path | None
) -> FileDigest:
    got = sink.close()
    problem = mismatch(got, size=pins.size, sha256=pins.sha256, md5=pins.md5)
    if problem:
        if keep_bad is not None:
            bad = keep_bad
            os.replace(sink.path, bad)
            raise IntegrityError(f"{what}: {problem}; the download is kept as {bad} for inspection")
        sink.discard()
        raise IntegrityError(f"{what}: {problem}")
    os.replace(sink.path, dest)
    return got


def _resumable(pins: Pins) -> bool:
    """Only a file whose content is pinned may be stitched from two transfers."""
    return bool(pins.sha256 or pins.md5)


def _transfer(url: str, sink: _Sink, pins: Pins, label: str, what: str) -> None:
    """Fill ``sink`` from ``url``, continuing from its current size where the server agrees."""
    headers = {"User-Agent": f"transfer-bench/{__version__}"}
    offset = sink.size
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            content_range = response.headers.get("Content-Range", "")
            if offset and not (
                response.status == 206 and content_range.startswith(f"bytes {offset}-")
            ):
                sink.restart()  # the server sent the whole file: start over
                offset = 0
            length = response.headers.get("Content-Length")
            total = pins.size if pins.size is not None else None
            if total is None and length and length.isdigit():
                total = offset + int(length)
            with _progress(label, total) as advance:
                advance(offset)
                _copy_stream(response, sink, advance)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the range is past the end: the .part is no good
            sink.restart()
            _transfer(url, sink, pins, label, what)
            return
        raise InputError(
            f"{what}: download failed: HTTP {exc.code} {exc.reason} from {url}"
        ) from None
    except urllib.error.URLError as exc:
        raise InputError(f"{what}: cannot reach {url}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise InputError(
            f"{what}: connection dropped after {sink.size} bytes from {url} "
            f"({type(exc).__name__}: {exc}); run the fetch again"
        ) from None
    if length and length.isdigit() and sink.size - offset < int(length):
        raise InputError(
            f"{what}: download cut short: got {sink.size - offset} of {int(length)} bytes "
            f"from {url}; run the fetch again"
        )


def download(
    url: str,
    dest: Path,
    pins: Pins,
    *,
    what: str,
    part: Path | None = None,
    bad: Path | None = None,
) -> FileDigest:
    """Download ``url`` to ``dest`` (via ``part``, verified, then renamed).

    A ``part`` left by a killed fetch is resumed when the file is pinned (module doc); a
    file that fails verification is kept as ``bad`` (default ``<dest>.bad``).
    """
    part = part or part_path(dest)
    sink = _Sink(part, resume=_resumable(pins))
    resumed = sink.size > 0
    try:
        if pins.size is not None and sink.size > pins.size:
            sink.restart()
            resumed = False
        if pins.size is None or sink.size < pins.size:
            _transfer(url, sink, pins, dest.name, what)
        if resumed and mismatch(sink.digest(), size=pins.size, sha256=pins.sha256, md5=pins.md5):
            sink.restart()  # the kept bytes were not the pinned file's: fetch it whole
            _transfer(url, sink, pins, dest.name, what)
        return _publish(sink, dest, pins, what, keep_bad=bad or dest.with_name(dest.name + ".bad"))
    except KeyboardInterrupt:
        sink.keep()  # interrupted, like a kill: the next fetch resumes it
        raise
    except BaseException:
        sink.discard()
        raise


def copy_local(
    src: Path,
    dest: Path,
    pins: Pins,
    *,
    what: str,
    part: Path | None = None,
    ignored: list[str] | None = None,
) -> FileDigest:
    """Copy a local file (or pack a folder, see :mod:`.pack`) to ``dest``, verified.

    Packing a folder appends the platform metadata files it left out to ``ignored``.
    """
    src = Path(src).expanduser()
    if not src.exists():
        raise InputError(f"{what}: {src} does not exist")
    if not (src.is_file() or src.is_dir()):
        raise InputError(f"{what}: {src} is not a file or folder")
    sink = _Sink(part or part_path(dest))
    try:
        if src.is_dir():
            from harness.datasets.pack import pack_folder

            pack_folder(src, sink, ignored=ignored)
        else:
            with open(src, "rb") as fh, _progress(dest.name, src.stat().st_size) as advance:
                _copy_stream(fh, sink, advance)
        return _publish(sink, dest, pins, f"{what} ({src})", keep_bad=None)
    except OSError as exc:
        raise InputError(f"{what}: cannot copy {src}: {exc.strerror or exc}") from None
    finally:
        sink.discard()
