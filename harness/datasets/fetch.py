"""Getting one file into the archives folder: an https download or a copy of a local file.

The bytes go to a temporary name in the destination folder while being hashed; only when
size and hashes match the pins is the file renamed into place (tensorflow-datasets
style). A hash mismatch keeps the download as ``<name>.bad`` for inspection and says
expected vs got; an HTTP error or a dropped connection is one line and leaves no file.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import tempfile
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


class _Sink:
    """A temporary file next to ``dest`` that hashes what is written to it."""

    def __init__(self, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        self.path = Path(tmp)
        self.fh = os.fdopen(fd, "wb")
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

    def close(self) -> FileDigest:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        return FileDigest(size=self.size, sha256=self.sha.hexdigest(), md5=self.md5.hexdigest())

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


def _publish(sink: _Sink, dest: Path, pins: Pins, what: str, *, keep_bad: bool) -> FileDigest:
    got = sink.close()
    problem = mismatch(got, size=pins.size, sha256=pins.sha256, md5=pins.md5)
    if problem:
        if keep_bad:
            bad = dest.with_name(dest.name + ".bad")
            os.replace(sink.path, bad)
            raise IntegrityError(f"{what}: {problem}; the download is kept as {bad} for inspection")
        sink.discard()
        raise IntegrityError(f"{what}: {problem}")
    os.replace(sink.path, dest)
    return got


def download(url: str, dest: Path, pins: Pins, *, what: str) -> FileDigest:
    """Download ``url`` to ``dest`` (temporary name, verified, then renamed)."""
    request = urllib.request.Request(url, headers={"User-Agent": f"transfer-bench/{__version__}"})
    sink = _Sink(dest)
    try:
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else pins.size
                with _progress(dest.name, total) as advance:
                    _copy_stream(response, sink, advance)
        except urllib.error.HTTPError as exc:
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
        if length and length.isdigit() and sink.size < int(length):
            raise InputError(
                f"{what}: download cut short: got {sink.size} of {int(length)} bytes from "
                f"{url}; run the fetch again"
            )
        return _publish(sink, dest, pins, what, keep_bad=True)
    except BaseException:
        sink.discard()
        raise


def copy_local(src: Path, dest: Path, pins: Pins, *, what: str) -> FileDigest:
    """Copy a local file to ``dest`` (temporary name, verified, then renamed)."""
    src = Path(src).expanduser()
    if not src.is_file():
        raise InputError(f"{what}: {src} is not a file")
    sink = _Sink(dest)
    try:
        with open(src, "rb") as fh, _progress(dest.name, src.stat().st_size) as advance:
            _copy_stream(fh, sink, advance)
        return _publish(sink, dest, pins, f"{what} ({src})", keep_bad=False)
    except OSError as exc:
        raise InputError(f"{what}: cannot copy {src}: {exc.strerror or exc}") from None
    finally:
        sink.discard()
