"""Results history: an SQLite index over the run folders, trends and steps across runs.

:mod:`harness.history.index` builds and updates the index (run folders stay the source of
truth); :mod:`harness.history.trends` answers the questions: one series per cell, metric and
machine (hardware identity + lock digest), ordered by time or commit, with its steps
(:mod:`harness.history.steps`).
"""

from __future__ import annotations

from harness.history.index import (
    DB_NAME,
    IndexUpdate,
    Skip,
    connect,
    default_db_path,
    update_index,
)
from harness.history.trends import METRICS, ORDERS, MetricSpec, RunRow, Series, StepFound, query

__all__ = [
    "DB_NAME",
    "METRICS",
    "ORDERS",
    "IndexUpdate",
    "MetricSpec",
    "RunRow",
    "Series",
    "Skip",
    "StepFound",
    "connect",
    "default_db_path",
    "query",
    "update_index",
]
