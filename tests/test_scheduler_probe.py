"""A ``--scheduler`` address that does not answer as a Dask scheduler is one line and exit 2
within a bound, never a hang (issue 18).

Real listeners on 127.0.0.1 only: a plain HTTP server, a socket that accepts and stays
silent, and, for the good case, a real ``distributed.LocalCluster`` (scheduler and a worker
on loopback TCP). The bad cases go through the real CLI in a subprocess.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import BENCH, REPO

from harness.errors import InputError
from harness.executors import cluster

pytest.importorskip("distributed")

CELL = "synth-few/scratch/float32/s0"
TIMEOUT_S = 1  # BENCH_DASK_TIMEOUT for the CLI: the connect, and as long again for the reply


@contextlib.contextmanager
def http_server() -> Iterator[int]:
    """A plain HTTP server on a free loopback port (it answers Dask's bytes with a 400)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A loopback socket that accepts every connection and never says a word."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                accepted.append(sock.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        sock.close()


LISTENERS: dict[str, Callable[[], contextlib.AbstractContextManager[int]]] = {
    "http-server": http_server,
    "silent-listener": silent_listener,
}


@pytest.mark.parametrize("kind", LISTENERS)
def test_a_scheduler_address_that_does_not_answer_is_one_line_not_a_hang(
    bench_env: dict[str, str], tmp_path: Path, kind: str
) -> None:
    runs = tmp_path / "runs"
    with LISTENERS[kind]() as port:
        address = f"tcp://127.0.0.1:{port}"
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                [
                    *BENCH, "all", "--profile", "smoke", "--only", CELL, "--dry-run",
                    "--no-compare", "--runs-dir", str(runs), "--run-id", "dask",
                    "--executor", "dask", "--scheduler", address,
                ],
                cwd=REPO,
                env={**bench_env, "BENCH_DASK_TIMEOUT": str(TIMEOUT_S)},
                capture_output=True,
                text=True,
                timeout=90,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail(f"bench all hung on a {kind} at {address}")
        took = time.monotonic() - t0
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"bench: error: --scheduler {address}: "), lines[0]
    assert "Dask scheduler" in lines[0] and "check the address" in lines[0], lines[0]
    assert took < 60, took  # start-up and imports; the probe itself gives up after 2 s
    assert not runs.exists()  # nothing was written


@pytest.mark.parametrize("kind", LISTENERS)
def test_the_probe_is_bounded_by_twice_the_timeout(kind: str) -> None:
    with LISTENERS[kind]() as port:
        t0 = time.monotonic()
        with pytest.raises(InputError) as err:
            cluster.probe(f"tcp://127.0.0.1:{port}", 0.5)
        took = time.monotonic() - t0
    assert took < 5, took
    assert f"--scheduler tcp://127.0.0.1:{port}:" in err.value.message


def test_a_real_scheduler_answers_and_a_worker_is_told_apart() -> None:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
        dashboard_address=None,
    ) as local:  # fmt: skip
        ex = cluster.DaskExecutor(local.scheduler_address)
        ex.open()
        try:
            described = ex.describe()
        finally:
            ex.close()
        assert described["workers"] == 1 and described["scheduler"] == local.scheduler_address
        worker = next(iter(local.workers.values())).address
        with pytest.raises(InputError) as err:
            cluster.probe(worker, 2)
        assert "the Dask server there is a Worker, not a scheduler" in err.value.message
