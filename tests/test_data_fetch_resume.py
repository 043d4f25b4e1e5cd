"""A fetch killed mid-file leaves ``.<name>.part``; the next fetch resumes it or cleans it up.

A real ``bench data fetch`` process downloads from a loopback server that sends half the
file and then stalls; the test SIGKILLs it (no clean-up can run), then fetches again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import (
    Server,
    folders_entry,
    http_server,
    make_image_folders,
    make_tar,
    run_cli,
    write_manifest,
)

REPO = Path(__file__).resolve().parent.parent
COUNTS = {"train": 6, "val": 2}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def _archive(env: Path) -> bytes:
    """A real image-folders tar.gz of about 2 MB (noise keeps it from compressing)."""
    src = make_image_folders(env / "src", {"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}})
    noise = np.random.default_rng(0).bytes(2 << 20)
    (src / "train" / "README.bin").write_bytes(noise)  # beside the class folders: ignored
    return make_tar(src, env / "pets.tar.gz").read_bytes()


def _part(env: Path) -> Path:
    return env / "data" / "archives" / ".pets.tar.gz.part"


def _kill_mid_fetch(env: Path, server: Server, body: bytes) -> int:
    """Start `bench data fetch pets` in a process, SIGKILL it once part of the file is in;
    returns the bytes the ``.part`` holds (what reached the disk before the kill)."""
    server.routes["/pets.tar.gz"] = ("stall", body, len(body) // 2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "data", "fetch", "pets"],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        _part(env).is_file() and _part(env).stat().st_size > 0
    ):
        time.sleep(0.05)
    time.sleep(0.5)  # the server now stalls: whatever was sent has been written
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = _part(env).stat().st_size
    assert 0 < kept <= len(body) // 2, kept
    return kept


def _status(capsys: pytest.CaptureFixture[str]) -> str:
    _, out, _ = run_cli(capsys, "data", "list", "--json")
    return json.loads(out)[0]["status"]


def test_killed_fetch_is_resumed_with_a_range_request(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = _archive(env)
    with http_server() as server:
        url = server.url("/pets.tar.gz")
        write_manifest(
            env / "home", {"pets": folders_entry(url, env / "pets.tar.gz", ["a", "b"], COUNTS)}
        )
        kept = _kill_mid_fetch(env, server, body)
        assert _status(capsys) == "pinned"  # a .part is not a fetched archive
        server.routes["/pets.tar.gz"] = ("ranges", body, 0)
        server.requests.clear()
        code, _, err = run_cli(capsys, "data", "fetch", "pets")
        assert code == 0, err
        assert server.requests == [("/pets.tar.gz", f"bytes={kept}-")]  # only the rest
    assert (env / "data" / "archives" / "pets.tar.gz").read_bytes() == body
    assert not _part(env).exists()
    assert _status(capsys) == "fetched"


def test_leftover_part_that_cannot_be_resumed_is_cleaned_up(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = _archive(env)
    with http_server() as server:
        url = server.url("/pets.tar.gz")
        write_manifest(
            env / "home", {"pets": folders_entry(url, env / "pets.tar.gz", ["a", "b"], COUNTS)}
        )
        # 1. A server that ignores Range: the kept half is dropped, the file comes whole.
        kept = _kill_mid_fetch(env, server, body)
        server.routes["/pets.tar.gz"] = ("ok", body, 0)
        server.requests.clear()
        assert run_cli(capsys, "data", "fetch", "pets")[0] == 0
        assert [r for _, r in server.requests] == [f"bytes={kept}-"]
        assert (env / "data" / "archives" / "pets.tar.gz").read_bytes() == body
        assert not _part(env).exists()
        # 2. A .part of other bytes (another file's, a changed upload): resumed, found
        # wrong against the pins, and fetched again from the first byte.
        (env / "data" / "archives" / "pets.tar.gz").unlink()
        _part(env).write_bytes(b"\0" * 1000)
        server.routes["/pets.tar.gz"] = ("ranges", body, 0)
        server.requests.clear()
        assert run_cli(capsys, "data", "fetch", "pets")[0] == 0
        assert [r for _, r in server.requests] == ["bytes=1000-", None]
        assert (env / "data" / "archives" / "pets.tar.gz").read_bytes() == body
        assert not _part(env).exists()
        assert not list((env / "data" / "archives").glob("*.bad"))
