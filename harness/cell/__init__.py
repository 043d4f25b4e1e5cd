"""One cell, in its own process: everything that runs inside it.

:mod:`~harness.cell.process` is the process (``python -m harness.cell.process``): the
backend's environment set before Keras starts, the result written, progress reported.
:mod:`~harness.cell.runner` runs the cell's phases (setup, inputs, build, fit, measure,
record); :mod:`~harness.cell.strategies` builds the model and its freeze policy;
:mod:`~harness.cell.timing` and :mod:`~harness.cell.tensorboard` are the Keras callbacks
that watch training; :mod:`~harness.cell.streaming` feeds splits too big to hold whole.
Nothing here knows about other cells, executors or the end of a run.
"""
