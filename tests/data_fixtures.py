"""Helpers for the data-layer tests: real images, real archives, a real loopback HTTP server.

Plain functions (no conftest): build small JPEG/PNG class folders with Pillow, pack them
as tar.gz or zip, write a test manifest under a temporary BENCH_HOME, and serve bytes
from 127.0.0.1 with scripted failures (404, 500, short body, dropped connection).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import struct
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from harness import cli


def make_image_folders(
    root: Path, splits: dict[str, dict[str, int]], *, seed: int = 0, fmt: str = "JPEG"
) -> Path:
    """``root/<split>/<class>/<i>.jpg`` with real, small, distinct images."""
    rng = np.random.default_rng(seed)
    ext = {"JPEG": "jpg", "PNG": "png"}[fmt]
    for split, classes in splits.items():
        for cls, n in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(20, 48)), int(rng.integers(20, 48))
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                mode = "L" if i % 3 == 2 else "RGB"  # some grayscale files too
                Image.fromarray(pixels).convert(mode).save(folder / f"{i:03d}.{ext}", fmt)
    return root


def make_tar(src: Path, out: Path, *, arcname: str = "") -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=str(Path(arcname) / path.relative_to(src)), recursive=False)
    return out


def make_zip(src: Path, out: Path, *, arcname: str = "") -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                zf.write(path, str(Path(arcname) / path.relative_to(src)))
    return out


def apple_double(xattrs: dict[str, bytes]) -> bytes:
    """An AppleDouble file as macOS ``copyfile`` writes ``._<name>`` (what Finder's zips
    and non-Mac volumes hold): header, a Finder-info entry whose tail is the "ATTR" block
    of extended attributes, and an empty resource fork.

    Format: Apple's AppleSingle/AppleDouble v2 (RFC 1740) with copyfile's attribute header.
    """
    finder_info = b"\0" * 32 + b"\0\0"  # 32 bytes of Finder info, 2 bytes of padding
    names = [n.encode() + b"\0" for n in xattrs]
    header_len, entry_lens = 36, [(11 + len(n) + 3) & ~3 for n in names]
    attrs_start = 50 + len(finder_info)  # where the ATTR header sits in the file
    data_start = attrs_start + header_len + sum(entry_lens)
    entries, data, offset = b"", b"", data_start
    for name, value in zip(names, xattrs.values(), strict=True):
        entry = struct.pack(">IIHB", offset, len(value), 0, len(name)) + name
        entries += entry + b"\0" * (-len(entry) % 4)
        data += value
        offset += len(value)
    total = data_start + len(data)
    attr_header = b"ATTR" + struct.pack(
        ">IIII3IHH", 0, total, data_start, len(data), 0, 0, 0, 0, len(names)
    )
    info = finder_info + attr_header + entries + data
    head = struct.pack(">II16sH", 0x00051607, 0x00020000, b"Mac OS X        ", 2)
    descriptors = struct.pack(">III", 9, 50, len(info)) + struct.pack(">III", 2, 50 + len(info), 0)
    return head + descriptors + info


DS_STORE = b"\0\0\0\1Bud1" + b"\0" * 4086  # a .DS_Store's buddy-allocator header, empty


def make_finder_zip(src: Path, out: Path) -> Path:
    """``src`` zipped as macOS Finder's "Compress" does (``ditto -c -k --sequesterRsrc
    --keepParent``): the folder itself as the top member, folder entries, Unix modes, a
    ``.DS_Store`` in the top folder, and after every file an AppleDouble ``._<name>``
    holding its extended attributes under ``__MACOSX/``."""
    quarantine = {"com.apple.quarantine": b"0083;65f1c2a0;Safari;"}

    def add(zf: zipfile.ZipFile, name: str, data: bytes | None, mode: int) -> None:
        info = zipfile.ZipInfo(name, date_time=(2024, 3, 13, 10, 0, 0))
        info.create_system = 3  # Unix
        info.external_attr = mode << 16 | (0x10 if data is None else 0)
        info.compress_type = zipfile.ZIP_STORED if data is None else zipfile.ZIP_DEFLATED
        zf.writestr(info, b"" if data is None else data)

    top = src.name
    seen: set[str] = set()
    with zipfile.ZipFile(out, "w") as zf:
        add(zf, f"{top}/", None, 0o40755)
        add(zf, f"{top}/.DS_Store", DS_STORE, 0o100644)
        add(zf, "__MACOSX/", None, 0o40755)
        add(zf, f"__MACOSX/{top}/", None, 0o40755)
        add(zf, f"__MACOSX/{top}/._.DS_Store", apple_double({}), 0o100644)
        for path in sorted(src.rglob("*")):
            rel = f"{top}/{path.relative_to(src).as_posix()}"
            if path.is_dir():
                add(zf, f"{rel}/", None, 0o40755)
                continue
            add(zf, rel, path.read_bytes(), 0o100644)
            parent = rel.rsplit("/", 1)[0]
            if parent not in seen:
                seen.add(parent)
                add(zf, f"__MACOSX/{parent}/", None, 0o40755)
            add(zf, f"__MACOSX/{parent}/._{path.name}", apple_double(quarantine), 0o100644)
    return out


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking 8-bit grayscale PNG whose IHDR declares ``width``×``height`` pixels
    (its IDAT holds a few bytes): what a decompression bomb's header looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def tar_with(out: Path, members: list[tarfile.TarInfo], payload: bytes = b"x") -> Path:
    """A tar.gz holding one good-looking image folder plus hand-made ``members``."""
    with tarfile.open(out, "w:gz") as tar:
        for info in members:
            data = payload if info.isfile() else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(
    home: Path, datasets: dict[str, Any], weights: dict[str, Any] | None = None
) -> Path:
    path = home / "data" / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {
        "kind": "transfer-bench.manifest",
        "schema": 1,
        "datasets": datasets,
        "weights": weights or {},
    }
    path.write_text(json.dumps(obj, indent=2))
    return path


def folders_entry(
    url: str | None,
    archive: Path,
    classes: list[str],
    splits: dict[str, int],
    *,
    pinned: bool = True,
    layout_splits: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A manifest entry for an image-folders archive (https when ``url``, else local)."""
    source: dict[str, Any] = {"filename": archive.name}
    if url:
        source.update(type="https", url=url)
    else:
        source.update(type="local")
    if pinned:
        source.update(sha256=sha256(archive), size=archive.stat().st_size)
    return {
        "source": source,
        "layout": {"format": "image-folders", "splits": layout_splits or {s: s for s in splits}},
        "classes": classes,
        "channels": 3,
        "splits": splits,
        "prepared": {},
    }


def run_cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    """``bench ARGV`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name → bytes), to prove nothing changed."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[str, bytes, int]]] = {}
    requests: ClassVar[list[tuple[str, str | None]]] = []  # (path, Range header)
    release: ClassVar[threading.Event] = threading.Event()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        self.requests.append((self.path, rng))
        mode, body, arg = self.routes.get(self.path, ("status", b"", 404))
        if mode == "status":
            self.send_error(arg)
            return
        start = 0
        if mode == "ranges" and rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes=") : -1])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if mode in ("ok", "ranges"):
            self.wfile.write(body[start:])
            return
        self.wfile.write(body[:arg])
        self.wfile.flush()
        if mode == "stall":  # half a file, then nothing until the test lets go
            self.release.wait(60)
            self.close_connection = True
            return
        if mode == "drop":  # abort with a TCP reset: linger 0, close without a shutdown
            linger = struct.pack("ii", 1, 0)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            self.connection.close()
            self.dropped = True
        self.close_connection = True

    def finish(self) -> None:
        if not getattr(self, "dropped", False):
            super().finish()


class Server:
    """Routes: path → ("ok", body, 0) | ("ranges", body, 0) (honours ``Range``) |
    ("status", b"", code) | ("short"|"drop"|"stall", body, n) (n bytes, then cut, reset, or
    hang until ``release`` is set). ``requests`` logs (path, Range header) per request."""

    def __init__(self, httpd: http.server.ThreadingHTTPServer, handler: type) -> None:
        self.httpd = httpd
        self.routes: dict[str, tuple[str, bytes, int]] = handler.routes
        self.requests: list[tuple[str, str | None]] = handler.requests
        self.release: threading.Event = handler.release

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@contextmanager
def http_server() -> Iterator[Server]:
    handler = type(
        "Handler", (_Handler,), {"routes": {}, "requests": [], "release": threading.Event()}
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield Server(httpd, handler)
    finally:
        handler.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()
