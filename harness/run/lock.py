"""One writer per run folder: an exclusive ``fcntl.flock`` on ``<run>/.lock``.

``bench all`` / ``bench run`` (and ``--resume``) hold the lock for as long as they write
into the run folder, so a second writer on the same run id is refused (InputError, exit 2)
naming the holder's pid, instead of both training every cell at once, overwriting each
other's results and measuring throughput under contention. The kernel releases the lock
when its holder exits, however it exits (even SIGKILL), so a stale ``.lock`` file never
blocks anyone; the file itself stays (it only says who held it last). Readers (``compare``,
``report``, ``baseline accept``) do not take it: every file they read is written atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from harness import fsio
from harness.errors import InputError
from harness.runfolder import LOCK_NAME


@contextlib.contextmanager
def hold(run_dir: Path) -> Iterator[Path]:
    """Hold the run folder's lock (creating the folder) for the ``with`` block."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    with fsio.guard(run_dir, "create the run folder"):
        run_dir.mkdir(parents=True, exist_ok=True)
    with fsio.guard(path, "lock the run folder"):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"run folder {run_dir} is in use by {_holder(fd)}: another bench is writing "
                "to it; wait for it to finish (or stop it), or choose another --run-id"
            ) from None
        with fsio.guard(path, "write"):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {' '.join(sys.argv)[:300]}\n".encode())
        yield path
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """``pid N (command)`` of the process holding the lock, as it wrote it."""
    with contextlib.suppress(OSError):
        text = os.pread(fd, 400, 0).decode(errors="replace").strip()
        pid, _, command = text.partition(" ")
        if pid.isdigit():
            return f"pid {pid}" + (f" ({command})" if command else "")
    return "another process (pid unknown)"
