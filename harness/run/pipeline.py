"""The end of a run, in one direction: compare, then report, then history, then (optionally) MLflow.

Called by the orchestration layer (``bench all``), never by the boxes it calls: compare does
not know about the report, the report not about the history, and so on down the design's
arrows (results -> compare -> report -> history -> exporters).

Exit code: the comparison's (1 on a regression, a changed or failed cell; 4 when the gate
compared too few cells, or no cell ran at all; 0 without a baseline, when the caller counts
failed cells itself), or 2 when a step could not use its input (a
``--baseline`` that is missing, unreadable, of another profile or schema; an index that
cannot be written; an MLflow store that refuses the export). Each such problem is one line,
and the steps after it still run: a broken gate never passes silently, and the report is
always written.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness import history, runfolder
from harness.analysis import baseline as baseline_mod
from harness.analysis import compare, report
from harness.errors import EXIT_BAD_INPUT, EXIT_NOT_COMPARED, EXIT_OK, BenchError
from harness.history import gate


def _error(exc: BenchError) -> int:
    print(f"bench: error: {exc.message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def compare_step(
    run_dir: Path, baseline_path: Path | None, *, history_db: Path | None = None
) -> tuple[compare.Comparison | None, int]:
    """Compare with the baseline if there is one; prints the verdict table or why not.

    A run none of whose cells produced a result has nothing to compare or to pass with:
    it says so and ends :data:`~harness.errors.EXIT_NOT_COMPARED` even without a baseline.
    """
    info = runfolder.read_run(run_dir)
    try:
        found = gate.comparison(run_dir, baseline_path, history_db=history_db)
    except BenchError as exc:
        return None, _error(exc)
    if found is None:
        print(
            f"no baseline for profile {info.profile} "
            f"({baseline_mod.default_path(info.profile)}); accept one with "
            f"`bench baseline accept {info.run_id}`"
        )
        measured = [c for c in runfolder.read_cells(run_dir) if c.ok]
        if not measured:
            print(f"NOT COMPARED: run {info.run_id} has no cell that ran (see the report)")
            return None, EXIT_NOT_COMPARED
        return None, EXIT_OK
    print(compare.render_table(found))
    return found, found.exit_code


def end_of_run(
    run_dir: Path,
    *,
    baseline_path: Path | None = None,
    compare_and_report: bool = True,
    index: bool = True,
    history_db: Path | None = None,
    mlflow_uri: str | None = None,
    mlflow_experiment: str | None = None,
) -> int:
    """Compare, report, index the run folder's parent into the history, export to MLflow.

    ``compare_and_report=False`` (``bench all --no-compare``) skips the first two steps.
    """
    run_dir = Path(run_dir)
    code = EXIT_OK
    if compare_and_report:
        found, code = compare_step(run_dir, baseline_path, history_db=history_db)
        print(f"report: {report.write_report(run_dir, comparison=found)}")
    if index:
        try:
            update = history.update_index(run_dir.parent, history_db)
        except BenchError as exc:
            code = max(code, _error(exc))
        else:
            for line in update.lines():
                print(line)
    if mlflow_uri:
        from harness.exporters import mlflow as mlflow_export

        try:
            exported = mlflow_export.export_run(
                run_dir, tracking_uri=mlflow_uri, experiment=mlflow_experiment
            )
        except BenchError as exc:
            code = max(code, _error(exc))
        else:
            print(exported.summary())
    return code
