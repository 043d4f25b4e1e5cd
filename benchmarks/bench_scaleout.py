"""Scale-out costs: Dask's scheduling overhead per cell, and ``--jobs 2`` on the smoke matrix.

Run: ``.venv/bin/pytest benchmarks/bench_scaleout.py --benchmark-only -s`` (the overhead),
or ``.venv/bin/python benchmarks/bench_scaleout.py [--smoke]`` (figures on stdout;
``--smoke`` adds the smoke matrix's wall time, serial against ``--jobs 2``, minutes).

1. **Scheduling overhead per cell** (target < 1 s): the latency of one cell job through
   an executor, from handing it over to its end being recorded, for a cell process that
   exits at once (an invalid cell: the process starts, fails and is recorded as failed,
   so the figure is the executor's machinery plus one interpreter start, not training).
   Serial runs it here; Dask submits it to a real local cluster (``LocalCluster``: a
   scheduler and two worker processes on loopback), the worker runs the same command and
   ships the result back. Overhead = median Dask latency - median serial latency.
2. **Smoke matrix, ``--jobs 2`` against serial** (``--smoke``): ``bench all --profile
   smoke`` into temporary run folders, data prepared beforehand, both run back to back;
   the ratio is serial wall / jobs-2 wall. Cells are CPU-bound, each pinned to one core
   under ``--jobs 2``; on a 2-core machine the ceiling is 2x, less the process start
   (importing TensorFlow) that both cells pay at once and any other load on the machine.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ROUNDS = 7
STUB = '{"not_a_cell_field": 1}'  # CellSpec refuses it at once: the process exits with 1


class _Hooks:
    def __init__(self) -> None:
        self.ends: list[Any] = []

    def started(self, job: Any, where: str) -> None:
        pass

    def event(self, job: Any, event: dict[str, Any]) -> None:
        pass

    def ended(self, job: Any, end: Any) -> None:
        self.ends.append(end)


def _job(k: int) -> Any:
    from harness.executors.base import CellJob
    from harness.matrix import CellSpec

    cell = CellSpec("stub", "scratch", "float32", k)
    return CellJob(f"stub-{k}", cell, ("--cell-json", STUB), f"cells/stub-{k}.json",
                   f"logs/stub-{k}.log", 1)  # fmt: skip


def latency(executor: Any, rounds: int = ROUNDS) -> list[float]:
    """Seconds per one-job run through ``executor`` (opened by the caller)."""
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        for k in range(rounds):
            hooks = _Hooks()
            t0 = time.perf_counter()
            executor.run([_job(k)], Path(tmp), hooks)
            out.append(time.perf_counter() - t0)
            assert len(hooks.ends) == 1 and hooks.ends[0].returncode == 1, hooks.ends
    return out


def measure_overhead(rounds: int = ROUNDS) -> dict[str, Any]:
    from distributed import LocalCluster

    from harness.executors.cluster import DaskExecutor
    from harness.executors.serial import SerialExecutor

    serial = latency(SerialExecutor(), rounds)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:  # fmt: skip
        ex = DaskExecutor(cluster.scheduler_address)
        ex.open()
        try:
            latency(ex, 1)  # the first task ships the function to the workers
            dask = latency(ex, rounds)
        finally:
            ex.close()
    s, d = statistics.median(serial), statistics.median(dask)
    return {
        "serial_latency_s": s,
        "dask_latency_s": d,
        "dask_overhead_per_cell_s": d - s,
        "serial_all_s": serial,
        "dask_all_s": dask,
        "rounds": rounds,
        "load_average": os.getloadavg(),
    }


def measure_smoke_jobs(runs_dir: Path, data_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "BENCH_DATA_DIR": str(data_dir), "BENCH_HOME": str(REPO)}
    prep = (
        "from harness.datasets.prepare import ensure_prepared\n"
        "for n in ('synth-few', 'synth-many', 'synth-xray'): ensure_prepared(n, 32)\n"
    )
    subprocess.run([sys.executable, "-c", prep], env=env, cwd=REPO, check=True)
    walls = {}
    for name, more in (("serial", []), ("jobs2", ["--jobs", "2"])):
        cmd = [sys.executable, "-m", "harness.cli", "all", "--profile", "smoke",
               "--runs-dir", str(runs_dir), "--run-id", name, "--no-compare", *more]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
        walls[name] = time.perf_counter() - t0
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {
        "serial_wall_s": walls["serial"],
        "jobs2_wall_s": walls["jobs2"],
        "speedup": walls["serial"] / walls["jobs2"],
        "cpus": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),
    }


def test_dask_scheduling_overhead_per_cell(benchmark: Any) -> None:
    figures: dict[str, Any] = {}

    def run() -> None:
        figures.update(measure_overhead())

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    print(
        f"\nper cell: serial {figures['serial_latency_s']:.3f} s, dask "
        f"{figures['dask_latency_s']:.3f} s, overhead {figures['dask_overhead_per_cell_s']:.3f} s"
    )
    assert figures["dask_overhead_per_cell_s"] < 1.0


if __name__ == "__main__":
    got = measure_overhead()
    print({k: v for k, v in got.items() if not k.endswith("_all_s")})
    if "--smoke" in sys.argv:
        with tempfile.TemporaryDirectory() as runs, tempfile.TemporaryDirectory() as data:
            print(measure_smoke_jobs(Path(runs), Path(data)))
