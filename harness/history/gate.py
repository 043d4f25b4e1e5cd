"""A run judged against its baseline, with the throughput history of its key as noise.

The one place that puts the gate's inputs together, for ``bench all``'s end of run,
``bench compare``, ``bench report`` and the dashboard: the baseline
(:func:`harness.analysis.baseline.choose`: ``--baseline``, else the stored one of the run's
reproducibility key, else another of its profile's) and the recent runs of the same cells
on the same key (:mod:`harness.history.samples`), handed to
:func:`harness.analysis.compare.compare_cells`.
"""

from __future__ import annotations

from pathlib import Path

from harness import runfolder
from harness.analysis import baseline as baseline_mod
from harness.analysis import compare, reprokey
from harness.history.index import default_db_path
from harness.history.samples import throughput_samples


def comparison(
    run_dir: Path,
    baseline_path: Path | None = None,
    *,
    accuracy_only: bool = False,
    history_db: Path | None = None,
) -> compare.Comparison | None:
    """The run folder compared with its baseline (``baseline_path``, else the stored one
    for its key, :func:`harness.analysis.baseline.choose`), with the throughput history of its run
    key from the index (``history_db``, default the runs folder's); None: no baseline."""
    run_dir = Path(run_dir)
    info = runfolder.read_run(run_dir)
    chosen = baseline_mod.choose(info.profile, info.environment, baseline_path)
    if chosen is None:
        return None
    cells = runfolder.read_cells(run_dir)
    key_id = reprokey.key_id(reprokey.run_key(info.environment))
    samples = throughput_samples(
        history_db or default_db_path(run_dir.parent),
        profile=info.profile,
        run_key_id=key_id,
        configs={c.cell_id: c.config for c in cells if c.ok},
        exclude=run_dir.name,
    )
    return compare.compare_cells(
        info,
        cells,
        chosen.baseline,
        baseline_path=chosen.baseline.path or "",
        exact_key=chosen.exact_key,
        selection=chosen.note,
        history=samples,
        accuracy_only=accuracy_only,
    )
