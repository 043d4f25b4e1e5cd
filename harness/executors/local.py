"""Several cells at once on this machine: ``--jobs N`` (CPU) or ``--devices 0,1|all`` (GPUs).

Each running cell has a *slot*; a slot owns a share of the machine, set in its cell
process's environment before any framework starts:

- the cores: the usable cores divided evenly between slots, the cell process pinned to
  its share (``sched_setaffinity``, which TensorFlow's, XLA's and OpenMP's thread pools
  size themselves by); the cell then picks its thread counts within that share by the
  same rule as a serial cell (:mod:`harness.threads`), so a cell computes the same
  numbers under ``--jobs`` as serially whenever the rule gives it the same intra-op
  threads (with more slots than cores, one core each, shared: said so as
  ``oversubscribed``);
- with ``--devices``: one GPU per slot, pinned with ``CUDA_VISIBLE_DEVICES`` (the cell sees
  it as its only GPU).

Every cell records its slot, cores, thread settings and device in ``extra.placement``,
and the run's fingerprint records the division (``environment.executor``). Cells that ran
while others shared the CPU (``--jobs`` > 1) are marked ``shared``: their throughput was
measured under sharing, and the report says so. The intra-op thread count changes the
last bits of a result (op determinism fixes the order of work for one thread count, not
across counts), so each cell records its thread plan and the comparison keys on it.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import queue
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.executors import process
from harness.executors.base import CellJob, Executor, Hooks
from harness.executors.serial import ended

_WAIT_S = 0.5  # the main thread wakes this often, so a signal is handled promptly


@dataclass(frozen=True)
class Slot:
    """One cell at a time: its cores, thread count and device (None: no GPU pinned)."""

    index: int
    cpus: tuple[int, ...]
    threads: int
    device: str | None
    oversubscribed: bool


def usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def divide(n: int, devices: list[str] | None = None, cpus: list[int] | None = None) -> list[Slot]:
    """``n`` slots over the usable cores (and ``devices``, one each)."""
    cpus = usable_cpus() if cpus is None else cpus
    share = len(cpus) // n
    slots = []
    for k in range(n):
        if share >= 1:
            mine, over = tuple(cpus[k * share : (k + 1) * share]), False
        else:
            mine, over = (cpus[k % len(cpus)],), True
        slots.append(Slot(k, mine, len(mine), devices[k] if devices else None, over))
    return slots


def visible_gpus() -> list[str]:
    """The GPUs ``--devices all`` means: ``CUDA_VISIBLE_DEVICES``'s entries when it is set,
    else the indices ``nvidia-smi`` lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def parse_devices(spec: str) -> list[str]:
    """``--devices 0,1`` or ``all`` (InputError naming the value when it is neither, repeats a
    device, or there is no GPU)."""
    text = spec.strip()
    if text.lower() == "all":
        found = visible_gpus()
        if not found:
            raise InputError(
                "--devices all: no GPU is visible here (nvidia-smi lists none, or "
                "CUDA_VISIBLE_DEVICES hides them); use --jobs N on a CPU"
            )
        return found
    devs = [d.strip() for d in text.split(",")]
    if not text or any(not d or not (d.isdigit() or d.startswith(("GPU-", "MIG-"))) for d in devs):
        raise InputError(
            f"--devices {spec!r}: expected GPU indices like 0,1,2,3 (or UUIDs), or 'all'"
        )
    if len(set(devs)) != len(devs):
        raise InputError(f"--devices {spec!r}: a device is named twice (one cell per device)")
    return devs


class LocalExecutor(Executor):
    """``jobs`` cells at once (``devices``: one per device), each in its own process."""

    name = "local"

    def __init__(self, jobs: int = 1, devices: list[str] | None = None) -> None:
        if jobs < 1:
            raise InputError(f"--jobs {jobs}: expected an integer >= 1")
        self.devices = devices
        self.slots = divide(len(devices) if devices else jobs, devices)
        self.procs = process.ProcessSet()

    @property
    def shared(self) -> bool:
        """Whether cells share the CPU while measuring (``--jobs`` > 1, not one GPU each)."""
        return len(self.slots) > 1 and not self.devices

    def describe(self) -> dict[str, Any]:
        first = self.slots[0]
        return {
            "name": self.name,
            "concurrent_cells": len(self.slots),
            "threads_per_cell": first.threads,
            "cpus_per_slot": [list(s.cpus) for s in self.slots],
            "oversubscribed": first.oversubscribed,
            "devices": self.devices,
            "throughput_shared": self.shared,
        }

    def slot_env(self, slot: Slot) -> dict[str, str]:
        env = {process.AFFINITY_ENV: ",".join(str(c) for c in slot.cpus)}
        if slot.device is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.device
        env[process.PLACEMENT_ENV] = json.dumps(
            {
                "executor": self.name,
                "slot": slot.index,
                "concurrent_cells": len(self.slots),
                "threads_per_cell": slot.threads,
                "cpus": list(slot.cpus),
                "oversubscribed": slot.oversubscribed,
                "device": slot.device,
                "shared": self.shared,
            }
        )
        return env

    def where(self, slot: Slot) -> str:
        if slot.device is not None:
            return f"GPU {slot.device}"
        return f"slot {slot.index}, cpu {','.join(str(c) for c in slot.cpus)}"

    def run(self, jobs: list[CellJob], run_dir: Any, hooks: Hooks) -> None:
        run_dir = Path(run_dir)
        free: queue.Queue[Slot] = queue.Queue()
        for slot in self.slots:
            free.put(slot)

        def one(job: CellJob) -> None:
            slot = free.get()
            try:
                hooks.started(job, self.where(slot))
                end = process.run(
                    job.args,
                    run_dir=run_dir,
                    log_path=run_dir / job.log_rel,
                    env=self.slot_env(slot),
                    on_event=lambda ev: hooks.event(job, ev),
                    procs=self.procs,
                )
                if not end.stopped:  # a stopped cell is not recorded (the run resumes it)
                    hooks.ended(job, ended(end))
            finally:
                free.put(slot)

        pool = cf.ThreadPoolExecutor(len(self.slots), thread_name_prefix="bench-cell")
        futures = [pool.submit(one, job) for job in jobs]
        try:
            pending = set(futures)
            while pending:
                done, pending = cf.wait(pending, timeout=_WAIT_S, return_when="FIRST_EXCEPTION")
                for fut in done:
                    fut.result()  # a failure to record (a full disk) stops the run
        except BaseException:  # a signal, or a failure to record: stop every running cell
            for fut in futures:
                fut.cancel()
            self.procs.stop_all()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
