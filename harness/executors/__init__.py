"""Where cells run: serially, several at once on this machine, or on a Dask cluster.

One interface (:class:`~harness.executors.base.Executor`), four ways to use it:

- ``serial`` (the default): one cell after another, today's path;
- ``local``: ``--jobs N`` cells at once on a CPU, the cores divided between them, or
  ``--devices 0,1|all``, one cell per GPU (:mod:`harness.executors.local`);
- ``dask``: each cell a task on an existing ``dask.distributed`` cluster
  (``--executor dask --scheduler tcp://HOST:PORT``; :mod:`harness.executors.cluster`);
- and, with any of them, ``--shard i/n``: a stable 1/n of the cells
  (:mod:`harness.run.shard`), merged back with ``bench merge``.

An executor never changes what a cell computes: every one runs the same cell process
command (:mod:`harness.executors.process`), and on a CPU in deterministic mode a cell's
history, weights digest and accuracy are the same under each (tested).
"""

from __future__ import annotations

from harness.errors import InputError
from harness.executors.base import CellEnd, CellJob, Executor, Hooks

EXECUTORS: tuple[str, ...] = ("serial", "local", "dask")

__all__ = ["EXECUTORS", "CellEnd", "CellJob", "Executor", "Hooks", "from_options"]


def from_options(
    executor: str | None = None,
    *,
    jobs: int | None = None,
    devices: str | None = None,
    scheduler: str | None = None,
) -> Executor:
    """The executor the command-line options ask for (InputError, one line, when they
    contradict each other or a value is bad). Not opened yet: nothing is connected."""
    if executor is not None and executor not in EXECUTORS:
        raise InputError(f"--executor {executor!r}: expected one of {list(EXECUTORS)}")
    if jobs is not None and jobs < 1:
        raise InputError(f"--jobs {jobs}: expected an integer >= 1")
    if jobs is not None and devices is not None:
        raise InputError(
            f"--jobs {jobs} and --devices {devices!r}: give one (--devices runs one cell per "
            "device)"
        )
    name = executor or (
        "dask"
        if scheduler is not None
        else "local"
        if devices is not None or (jobs or 1) > 1
        else "serial"
    )
    if name == "dask":
        if scheduler is None:
            raise InputError("--executor dask needs --scheduler tcp://HOST:PORT")
        if jobs is not None or devices is not None:
            raise InputError(
                "--jobs/--devices are for this machine; on Dask each worker runs one cell per "
                "thread (start workers with --nthreads 1, one per GPU: docs/scale-out.md)"
            )
        from harness.executors.cluster import DaskExecutor

        return DaskExecutor(scheduler)
    if scheduler is not None:
        raise InputError(f"--scheduler {scheduler!r} is for --executor dask, not {name}")
    if name == "serial":
        if devices is not None or (jobs or 1) > 1:
            raise InputError("--executor serial runs one cell at a time: drop --jobs/--devices")
        from harness.executors.serial import SerialExecutor

        return SerialExecutor()
    from harness.executors.local import LocalExecutor, parse_devices

    if devices is not None:
        return LocalExecutor(devices=parse_devices(devices))
    if jobs is None:
        raise InputError("--executor local needs --jobs N or --devices LIST (or 'all')")
    return LocalExecutor(jobs)
