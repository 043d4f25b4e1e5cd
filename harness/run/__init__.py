"""A matrix run, from the driver's side: everything around the cells, none of their work.

In the order a run meets them: :mod:`~harness.run.preflight` (every cell's inputs checked
and prepared once, before any cell starts; :mod:`~harness.run.hostdevices` says which
devices this host has), :mod:`~harness.run.orchestrate` (the run folder, resume, which
cells run: :mod:`~harness.run.shard`), :mod:`~harness.run.record` (the driver's side of an
executor: jobs out, results in, failures recorded, :mod:`~harness.run.repeats` combined),
:mod:`~harness.run.lock` (one writer per run folder), :mod:`~harness.run.progress` (the
display), and :mod:`~harness.run.pipeline` (the end of a run: compare, report, history,
MLflow). Where a cell's process runs is :mod:`harness.executors`'; what it computes is
:mod:`harness.cell`'s.
"""
