"""Exporters: a run's results written into tools people already use (MLflow).

The last box of the end-of-run pipeline: exporters read run folders (and may use everything
below them); nothing imports an exporter but the orchestration layer and its commands.
Each exporter imports its tool lazily, so the core never needs it installed.
"""
