"""A cell with ``repeats = N``: N cell processes, one result.

Each repeat is its own job (:class:`~harness.executors.base.CellJob`, under any
executor) writing ``repeats/<cell file stem>/r<k>.json``. Once all N are in,
:func:`combine` makes the cell's own result: the full result of the median repeat (by
train images/s), with ``extra.repeats`` holding every repeat's median step time and
images/s and their median, IQR and CV (:func:`harness.stats.throughput_repeats`), so a
comparison or report reads one cell as before and the spread across processes is there
for whoever asks. A failed repeat fails the cell, naming the repeat.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from harness.results import CellResult


def combine(cell_results: list[CellResult]) -> CellResult:
    """The cell's result from its repeats' results (in repeat order, 1-based)."""
    if not cell_results:
        raise ValueError("combine needs at least one repeat")
    n = len(cell_results)
    bad = [(k, r) for k, r in enumerate(cell_results, 1) if r.status != "ok"]
    if bad:
        k, r = bad[0]
        first = cell_results[0]
        return dataclasses.replace(
            r,
            status="failed",
            error=f"repeat {k}/{n} {r.status}: {r.error or 'no reason recorded'}",
            extra={**r.extra, "repeats": {"repeats": n, "failed_repeats": [i for i, _ in bad]}},
            config=first.config,
        )
    rates = [r.train_throughput for r in cell_results]
    summary: dict[str, Any] = {"repeats": n}
    chosen = 0
    if all(t is not None and t.step_series for t in rates):
        from harness.stats import throughput_repeats

        batch = rates[0].batch_size  # type: ignore[union-attr]
        summary = throughput_repeats([t.step_series for t in rates], batch)  # type: ignore[union-attr]
        per = summary["images_per_s"]
        mid = statistics.median_low(per)
        chosen = per.index(mid)
        inference = [r.inference_throughput for r in cell_results]
        if all(t is not None and t.step_series for t in inference):
            summary["inference"] = throughput_repeats(
                [t.step_series for t in inference],  # type: ignore[union-attr]
                inference[0].batch_size,  # type: ignore[union-attr]
            )
    summary["median_repeat"] = chosen + 1
    summary["wall_seconds"] = [r.wall_seconds for r in cell_results]
    summary["weights_digests_identical"] = len({r.weights_digest for r in cell_results}) == 1
    base = cell_results[chosen]
    return dataclasses.replace(base, extra={**base.extra, "repeats": summary})
