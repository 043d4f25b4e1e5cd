"""Cells as tasks on an existing Dask cluster: ``--executor dask --scheduler tcp://HOST:PORT``.

The driver (this process) first asks the address who it is, within a bounded time
(:func:`probe`: an address nobody answers on, a port held by a plain HTTP server, or a
listener that accepts and stays silent is one line, exit 2, never a hang), then connects
its client to the scheduler, checks that every worker runs the same code revision and
lock digest as the driver (else one line naming the worker, exit 2), and submits one task
per cell job (:func:`harness.executors.task.run_cell`). Each task runs the same cell
process command on its worker and ships the result back; the orchestrator writes it
atomically into the driver's run folder as it finishes. ``dask.distributed`` is imported
only here, only when this executor is used (the ``dask`` extra); without it, one line.

Workers that declare a ``GPU`` resource (``dask worker … --resources GPU=1`` with
``CUDA_VISIBLE_DEVICES`` set, one worker per GPU) make every cell ask for one: a cell
then runs alone on its worker's GPU. On a cluster without GPU resources cells ask for
nothing and run one per worker thread (start workers with ``--nthreads 1``).

A worker lost mid-cell: the scheduler starts the task again on another worker; the driver
counts the starts (each task announces its start as a Dask event) and allows one retry:
when a cell's task starts a third time, or the scheduler gives up on it (``KilledWorker``)
after two starts, the cell is recorded as failed with the workers it was lost on. A
signal stops the run: every task is cancelled and each worker stops its cell's process.
When the driver itself dies, the scheduler drops its tasks the same way; ``--resume``
then runs only the cells without a result.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import uuid
from typing import Any

from harness import threads
from harness.errors import InputError
from harness.executors.base import CellEnd, CellJob, Executor, Hooks

MAX_STARTS = 2  # a cell's task may start twice: the first run, and one retry
CONNECT_TIMEOUT_S = 10.0
TIMEOUT_ENV = "BENCH_DASK_TIMEOUT"
_ADDRESS = re.compile(r"(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")
_POLL_S = 0.5


def check_address(text: str) -> str:
    """``tcp://HOST:PORT`` (or ``tls://``), port 1-65535; InputError naming the value."""
    m = _ADDRESS.fullmatch(text.strip())
    if not m or not 0 < int(m.group(3)) < 65536:
        raise InputError(
            f"--scheduler {text!r}: expected a Dask scheduler address like "
            "tcp://HOST:PORT (port 1-65535)"
        )
    return text.strip()


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise InputError(
            "--executor dask needs dask.distributed, which is not installed here: install "
            "the dask extra (pip install 'transfer-bench[dask]')"
        ) from None
    return distributed


def probe(address: str, timeout: float) -> None:
    """Connect to ``address``, complete the Dask handshake and ask for its identity, all in
    bounded time; InputError (one line) unless a Dask scheduler answered.

    ``distributed.Client`` bounds the TCP connect by its timeout, but not the handshake
    that follows, so a port held by a plain HTTP server, or by a listener that accepts and
    stays silent, would keep it waiting for ever. The connect gets ``timeout`` (refused
    connections are retried until then), the handshake and the reply as long again.
    """
    import asyncio

    from distributed.comm import connect

    async def ask() -> Any:
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    bound = 2 * timeout
    try:
        reply = asyncio.run(asyncio.wait_for(ask(), bound))
    except TimeoutError:
        raise InputError(
            f"--scheduler {address}: something accepted the connection but did not answer as "
            f"a Dask scheduler within {bound:g} s (another service on that port?); check the "
            "address (the scheduler's port, default 8786, not its dashboard's)"
        ) from None
    except Exception as exc:  # refused, unreachable, closed mid-handshake, not Dask's protocol
        why = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise InputError(
            f"--scheduler {address}: no Dask scheduler answered within {timeout:g} s ({why}); "
            "check the address, or start a cluster (docs/scale-out.md)"
        ) from None
    kind = reply.get("type") if isinstance(reply, dict) else None
    if kind != "Scheduler":
        raise InputError(
            f"--scheduler {address}: the Dask server there is a {kind or 'unknown server'}, not "
            "a scheduler; give the scheduler's address (tcp://HOST:8786 by default)"
        )


def connect_timeout() -> float:
    import os

    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return CONNECT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InputError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds > 0")
    return value


class DaskExecutor(Executor):
    name = "dask"

    def __init__(self, scheduler: str) -> None:
        self.address = check_address(scheduler)
        self.client: Any = None
        self.uses_gpu = False
        self.workers: dict[str, Any] = {}
        self.host_slots: dict[str, int] = {}
        self.identity: dict[str, Any] = {}

    def open(self) -> None:
        distributed = _distributed()
        timeout = connect_timeout()
        probe(self.address, timeout)
        try:
            self.client = distributed.Client(
                self.address, timeout=timeout, set_as_default=False, name="transfer-bench"
            )
        except (OSError, TimeoutError) as exc:
            why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise InputError(
                f"--scheduler {self.address}: no Dask scheduler answered within {timeout:g} s "
                f"({why}); check the address, or start a cluster (docs/scale-out.md)"
            ) from None
        try:
            self.client.wait_for_workers(1, timeout=timeout)
        except (OSError, TimeoutError):
            self.close()
            raise InputError(
                f"--scheduler {self.address}: the scheduler has no workers (waited "
                f"{timeout:g} s); start some: dask worker {self.address} --nthreads 1"
            ) from None
        self._check_workers()

    def _check_workers(self) -> None:
        from harness.executors import task

        info = self.client.scheduler_info(n_workers=-1)
        self.workers = dict(info.get("workers", {}))
        self.uses_gpu = any((w.get("resources") or {}).get("GPU") for w in self.workers.values())
        per_host: dict[str, int] = {}
        for w in self.workers.values():
            per_host[w.get("host")] = per_host.get(w.get("host"), 0) + int(w.get("nthreads", 1))
        self.host_slots = {a: per_host[w.get("host")] for a, w in self.workers.items()}
        mine = self.identity = task.identity()
        theirs = self.client.run(task.identity)
        for address, ident in sorted(theirs.items()):
            for field, what in (("git_commit", "code revision"), ("lock_digest", "lock digest")):
                if ident.get(field) != mine.get(field):
                    self.close()
                    raise InputError(
                        f"--scheduler {self.address}: worker {address} runs {what} "
                        f"{ident.get(field)!r}, this driver {mine.get(field)!r}; start the "
                        "workers from the same checkout or image"
                    )

    def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            with contextlib.suppress(Exception):  # a connection that already broke
                client.close(timeout=5)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scheduler": self.address,
            "workers": len(self.workers),
            "concurrent_cells": sum(int(w.get("nthreads", 1)) for w in self.workers.values()),
            "gpu_resources": self.uses_gpu,
            "throughput_shared": any(n > 1 for n in self.host_slots.values()) and not self.uses_gpu,
        }

    def run(self, jobs: list[CellJob], run_dir: Any, hooks: Hooks) -> None:
        if self.client is None:
            raise RuntimeError("DaskExecutor.run before open")  # a bug: the orchestrator opens
        _Run(self, jobs, hooks).run()


class _Run:
    """One run's tasks on the cluster: submitted, watched, retried once, collected."""

    def __init__(self, ex: DaskExecutor, jobs: list[CellJob], hooks: Hooks) -> None:
        self.ex, self.hooks = ex, hooks
        self.client = ex.client
        self.jobs = {job.key: job for job in jobs}
        self.token = uuid.uuid4().hex[:12]
        self.topic = f"transfer-bench-{self.token}"
        self.lock = threading.Lock()
        self.starts: dict[str, list[dict[str, Any]]] = {k: [] for k in self.jobs}
        self.submitted: dict[str, int] = {k: 0 for k in self.jobs}
        self.finished: set[str] = set()
        self.exhausted: set[str] = set()  # started a third time: lost twice
        self.woken = threading.Event()  # set when any task's future is done

    def spec(self, job: CellJob) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "job": job.key,
            "args": list(job.args),
            "result_rel": job.result_rel,
            "log_rel": job.log_rel,
            "scheduler": self.ex.address,
            "host_slots": self.ex.host_slots,
            # The run's thread settings are the driver's (its fingerprint and key record
            # them); a worker's own, e.g. the Nanny's OMP_NUM_THREADS=1, must not stand in.
            "thread_env": {v: os.environ[v] for v in threads.USER_VARS if os.environ.get(v)},
        }

    def submit(self, job: CellJob) -> Any:
        from harness.executors import task

        self.submitted[job.key] += 1
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", job.key)
        fut = self.client.submit(
            task.run_cell,
            self.spec(job),
            key=f"bench-cell-{self.token}-{safe}-a{self.submitted[job.key]}",
            pure=False,
            retries=0,
            resources={"GPU": 1} if self.ex.uses_gpu else None,
        )
        fut.add_done_callback(lambda _: self.woken.set())
        return fut

    def on_event(self, event: Any) -> None:
        """A Dask event from a task (on the client's thread): a start, or cell progress."""
        _, msg = event
        job = self.jobs.get(msg.get("job")) if isinstance(msg, dict) else None
        if job is None:
            return
        with self.lock:
            if job.key in self.finished:
                return
            if msg.get("event") == "start":
                self.starts[job.key].append(msg)
                n = len(self.starts[job.key])
                if n > MAX_STARTS:
                    self.exhausted.add(job.key)
                    return
                where = f"{msg.get('worker')} (pid {msg.get('worker_pid')})"
                if n > 1:
                    lost = self.starts[job.key][-2]
                    where += f", attempt {n}: worker {lost.get('worker')} was lost"
                self.hooks.started(job, where)
            elif msg.get("event") == "cell" and isinstance(msg.get("data"), dict):
                self.hooks.event(job, msg["data"])

    def run(self) -> None:
        self.client.subscribe_topic(self.topic, self.on_event)
        pending = {key: self.submit(job) for key, job in self.jobs.items()}
        try:
            while pending:
                # Woken by a future finishing (its callback), else every _POLL_S: the main
                # thread stays responsive to signals and sees retries becoming due.
                self.woken.wait(_POLL_S)
                self.woken.clear()
                for key, fut in list(pending.items()):
                    again = self.collect(key, fut)
                    if again is None:
                        del pending[key]
                    elif again is not fut:
                        pending[key] = again
        except BaseException:  # a signal: cancel every task; workers stop their cells
            self.cancel(list(pending.values()))
            raise
        finally:
            with contextlib.suppress(Exception):  # the connection is gone: nothing to undo
                self.client.unsubscribe_topic(self.topic)

    def cancel(self, futures: list[Any]) -> None:
        with contextlib.suppress(Exception):  # connection gone: the scheduler drops them anyway
            self.client.cancel(futures, force=True)

    def collect(self, key: str, fut: Any) -> Any:
        """The future to keep waiting on (``fut``, or a resubmission), or None when the job
        has ended (reported to the hooks)."""
        job = self.jobs[key]
        with self.lock:
            exhausted = key in self.exhausted
        if exhausted:
            self.cancel([fut])
            return self.lost(job, "twice")
        if not fut.done():
            return fut
        if fut.status == "finished":
            payload = fut.result()
            self.end(job, self.from_payload(job, payload))
            return None
        exc = fut.exception() if fut.status == "error" else None
        killed = type(exc).__name__ == "KilledWorker"
        if killed or fut.status == "cancelled":
            with self.lock:
                n = max(len(self.starts[key]), self.submitted[key])
            if n < MAX_STARTS:
                time.sleep(0.1)
                return self.submit(job)
            return self.lost(job, "twice" if killed else "cancelled")
        text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        self.end(job, CellEnd(None, lost=f"the cell's Dask task failed on the worker: {text}"))
        return None

    def lost(self, job: CellJob, how: str) -> None:
        with self.lock:
            workers = [
                f"{s.get('worker')} (pid {s.get('worker_pid')})" for s in self.starts[job.key]
            ]
        shown = ", ".join(workers[:MAX_STARTS]) or "unknown"
        if how == "twice":
            why = f"Dask worker lost while running the cell, retried once, lost again ({shown})"
        else:
            why = f"the cluster cancelled the cell's task ({shown})"
        self.end(job, CellEnd(None, lost=why, placement={"attempts": self.attempts(job)}))
        return None

    def attempts(self, job: CellJob, last: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.lock:
            starts = list(self.starts[job.key])
        rows = [{k: s.get(k) for k in ("worker", "address", "worker_pid", "host")} for s in starts]
        if last is not None and (not rows or rows[-1].get("worker_pid") != last.get("worker_pid")):
            rows.append({k: last.get(k) for k in ("worker", "address", "worker_pid", "host")})
        for row in rows[:-1]:
            row["outcome"] = "worker lost"
        if rows:
            rows[-1]["outcome"] = "finished" if last is not None else "worker lost"
        return rows

    def from_payload(self, job: CellJob, p: dict[str, Any]) -> CellEnd:
        placed = dict(p.get("placement") or {})
        attempts = self.attempts(job, placed)
        left = p.get("files_left_on_worker") or []
        lost = None
        ident = p.get("identity") or {}
        mine = self.ex.identity  # checked against every worker when connecting; a worker
        if ident.get("git_commit") != mine.get("git_commit"):
            lost = (  # that joined later may run other code
                f"worker {placed.get('worker')} ran code revision {ident.get('git_commit')!r}, "
                f"the driver {mine.get('git_commit')!r}: its result is not kept"
            )
        return CellEnd(
            returncode=p.get("returncode"),
            tail=tuple(p.get("tail") or ()),
            start_seconds=p.get("start_seconds"),
            process_seconds=p.get("process_seconds"),
            log_error=p.get("log_error") or "",
            lost=lost,
            result=None if lost else p.get("result"),
            log=p.get("log"),
            files={} if lost else dict(p.get("files") or {}),
            placement={
                "attempts": attempts,
                **({"files_left_on_worker": left} if left else {}),
            },
        )

    def end(self, job: CellJob, end: CellEnd) -> None:
        with self.lock:
            if job.key in self.finished:
                return
            self.finished.add(job.key)
        self.hooks.ended(job, end)
