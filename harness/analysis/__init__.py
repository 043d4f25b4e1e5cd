"""What a finished run means: verdicts against a baseline, findings, the report.

:mod:`~harness.analysis.baseline` (stored baselines, one per reproducibility key,
:mod:`~harness.analysis.reprokey`), :mod:`~harness.analysis.compare` (the gate: its exact
tier, :mod:`~harness.analysis.exact`, and its statistical tier,
:mod:`~harness.analysis.noise`), :mod:`~harness.analysis.crossbackend` (one matrix on two
backends), :mod:`~harness.analysis.findings` (what the numbers say, in words) and
:mod:`~harness.analysis.report` with its :mod:`~harness.analysis.plots`. They read run
folders and baselines; they never run a cell, and nothing here calls the history.
"""
