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
