"""The run folder: its layout, and the one module that names, finds, reads and writes it.

::

    reports/runs/<run-id>/
      run.json                        the run's record (RunInfo): at the start, and with
                                      finished_at at the end
      cells/<cell file>.json          one result per cell (CellResult); the cell file is the
                                      cell id with "/" as "__" (cell_filename)
      repeats/<cell file>/r<k>.json   repeat k of a cell with repeats > 1
      logs/<cell file>[.r<k>].log     each cell process's output
      tensorboard/<cell file>/        TensorBoard events (repeat 1 only)
      report/report.md, plots/*.png   bench report
      processes.json                  per cell process: wall and start cost, last invocation
      .lock                           the writer's lock (harness.run.lock)

Every other module asks this one for these names, to resolve a run id or path, to find a
profile's latest run, to tell which cells finished, and to write the record of a cell that
did not finish (:func:`failed_result`, which shares :func:`cell_fields` with the result of
a cell that did). Records are read through their :class:`~harness.jsonio.Record`
(:data:`harness.results.CELL`, :data:`~harness.results.RUN`), so an older schema is
upgraded where an upgrade exists and refused otherwise.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import fsio, jsonio, paths, results
from harness.errors import InputError
from harness.results import CellResult, RunInfo

if TYPE_CHECKING:
    from harness.matrix import CellSpec

RUN_JSON = "run.json"
CELLS = "cells"
REPEATS = "repeats"
LOGS = "logs"
TENSORBOARD = "tensorboard"
REPORT = "report"
REPORT_NAME = "report.md"  # in report/ (or the folder bench report --out names)
PLOTS = "plots"
PROCESSES_JSON = "processes.json"
LOCK_NAME = ".lock"
# Folders the harness names itself: under reports/, and inside a run folder.
RESERVED_RUN_IDS = frozenset(
    {"baselines", "runs", "perf", CELLS, LOGS, REPEATS, REPORT, TENSORBOARD}
)
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # whole string (fullmatch): no "x\n"

PROCESS_KIND = "transfer-bench.processes"
PROCESS_SCHEMA = 1
PROCESSES = jsonio.Record(PROCESS_KIND, PROCESS_SCHEMA)


# --- names -------------------------------------------------------------------------------


def cell_stem(cell_id: str) -> str:
    """A cell's name in the run folder: its id with ``/`` replaced by ``__``."""
    return cell_id.replace("/", "__")


def cell_filename(cell_id: str) -> str:
    """File name of a cell result: ``<cell stem>.json``."""
    return cell_stem(cell_id) + ".json"


def cell_rel(cell_id: str) -> str:
    """Where a cell's result goes, relative to the run folder: ``cells/<cell file>``."""
    return f"{CELLS}/{cell_filename(cell_id)}"


def repeat_rel(cell_id: str, repeat: int) -> str:
    """Result of repeat ``repeat`` (1-based) of a cell with ``repeats > 1``, relative to the
    run folder: ``repeats/<cell stem>/r<k>.json`` (the cell's own file, under cells/, is
    written once every repeat is in)."""
    return f"{REPEATS}/{cell_stem(cell_id)}/r{repeat}.json"


def log_rel(cell_id: str, repeat: int | None = None) -> str:
    """Where a cell process's output goes: ``logs/<cell stem>.log`` (``.r<k>.log`` a repeat)."""
    return f"{LOGS}/{cell_stem(cell_id)}{'' if repeat is None else f'.r{repeat}'}.log"


def cell_path(run_dir: Path, cell_id: str) -> Path:
    return Path(run_dir) / cell_rel(cell_id)


def tensorboard_dir(run_dir: Path, cell_id: str) -> Path:
    """``<run>/tensorboard/<cell stem>``: one TensorBoard run per cell."""
    return Path(run_dir) / TENSORBOARD / cell_stem(cell_id)


def report_dir(run_dir: Path) -> Path:
    return Path(run_dir) / REPORT


def is_run(path: Path) -> bool:
    """Whether ``path`` is a run folder (it holds run.json)."""
    return (Path(path) / RUN_JSON).is_file()


# --- finding runs ------------------------------------------------------------------------


def default_run_id(profile: str) -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{profile}"


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is a name a run folder may have (InputError naming ``--run-id``)."""
    if not _RUN_ID.fullmatch(run_id):
        raise InputError(f"--run-id {run_id!r}: use letters, digits, '.', '_' and '-' only")
    return run_id


def check_ours(run_dir: Path) -> None:
    """Refuse a run folder that is not ours: a reserved name, or an existing folder with
    no run.json that holds anything but our lock (a run that never started leaves that) and
    empty folders of a run's own names (nothing there to lose: e.g. ``cells/`` made ready
    as a mount point)."""
    name = run_dir.name
    if name in RESERVED_RUN_IDS:
        raise InputError(
            f"--run-id {name!r}: bench names its own folders so "
            f"({', '.join(sorted(RESERVED_RUN_IDS))}); choose another --run-id"
        )
    with fsio.guard(run_dir, "read"):
        if not os.path.lexists(run_dir) or is_run(run_dir):
            return
        if not run_dir.is_dir():
            raise InputError(
                f"--run-id {name!r}: {run_dir} exists and is not a folder; choose another "
                "--run-id or --runs-dir"
            )
        held = sorted(p.name for p in run_dir.iterdir() if not _nothing_to_lose(p))
    if held:
        raise InputError(
            f"--run-id {name!r}: {run_dir} exists and is not a run folder (no run.json; it "
            f"holds {held[0]!r}); it is left untouched: choose another --run-id or --runs-dir"
        )


def _nothing_to_lose(path: Path) -> bool:
    """Our lock, or an empty folder named as a part of a run folder."""
    if path.name == LOCK_NAME:
        return True
    parts = {CELLS, REPEATS, LOGS, TENSORBOARD, REPORT}
    return (
        path.name in parts and path.is_dir() and not path.is_symlink() and not any(path.iterdir())
    )


def resolve(run: str | Path) -> Path:
    """A run folder from a run id (under ``reports/runs/``) or a path; InputError if neither."""
    candidate = Path(run)
    if is_run(candidate):
        return candidate
    by_id = paths.runs_dir() / str(run)
    if is_run(by_id):
        return by_id
    raise InputError(
        f"run {str(run)!r}: no run.json at {candidate} nor at {by_id}; "
        f"pass a run id from {paths.runs_dir()} or the path of a run folder"
    )


def locate(text: str, runs_dir: Path) -> Path:
    """``text`` as a run folder that may not exist yet: a path (it holds run.json, or
    ``text`` has a ``/``), else the run id ``text`` under ``runs_dir``."""
    path = Path(text)
    if is_run(path) or "/" in text:
        return path
    return runs_dir / text


def latest(runs_dir: Path, profile: str) -> Path | None:
    """The newest run folder of ``profile`` (by run id) with a run.json, or None."""
    found = sorted(p.parent for p in Path(runs_dir).glob(f"*-{profile}/{RUN_JSON}"))
    return found[-1] if found else None


def finished_cells(run_dir: Path, cell_ids: list[str]) -> set[str]:
    """Those of ``cell_ids`` whose result is there, valid, with status ok or skipped: a
    resumed run does not run them again."""
    done = set()
    for cell_id in cell_ids:
        existing = cell_path(run_dir, cell_id)
        if existing.is_file():
            try:
                status = read_cell(existing).status
            except InputError:
                status = "unreadable"
            if status in ("ok", "skipped"):
                done.add(cell_id)
    return done


# --- records -----------------------------------------------------------------------------


def write_run(run_dir: Path, info: RunInfo) -> Path:
    path = Path(run_dir) / RUN_JSON
    results.RUN.write(path, results.to_dict(info))
    return path


def read_run(run_dir: Path) -> RunInfo:
    path = Path(run_dir) / RUN_JSON
    return results.run_from_dict(results.RUN.read(path), f"{path}: run")


def write_cell(run_dir: Path, result: CellResult) -> Path:
    return write_cell_file(cell_path(run_dir, result.cell_id), result)


def write_cell_file(path: Path, result: CellResult) -> Path:
    """A cell result at ``path`` (atomically; see :mod:`harness.jsonio`)."""
    results.CELL.write(Path(path), results.to_dict(result))
    return Path(path)


def read_cell(path: Path) -> CellResult:
    """A cell result; InputError naming the file and field when it does not validate
    (``bench all --resume`` runs such a cell again).

    In a run folder (``cells/<file>`` or ``repeats/<stem>/r<k>.json``) the file's name must
    be its cell's (:func:`cell_filename`): a result copied under another cell's name is not
    that cell's result."""
    path = Path(path)
    try:
        cell = results.cell_from_dict(results.CELL.read(path), f"{path}: cell")
        _check_file_name(path, cell.cell_id)
        return cell
    except InputError as exc:
        run = path.parent.parent  # cells/<file>, or repeats/<cell>/r<k>.json
        run_id = run.parent.name if run.name == REPEATS else run.name
        raise InputError(
            f"{exc.message}; `bench all --resume --run-id {run_id}` runs the cell again"
        ) from None


def _check_file_name(path: Path, cell_id: str) -> None:
    """InputError when ``path`` lies where a run folder keeps the results of another cell."""
    stem = cell_stem(cell_id)
    if path.parent.name == CELLS:
        ok, belongs = path.name == f"{stem}.json", f"{CELLS}/{stem}.json"
    elif path.parent.parent.name == REPEATS:
        ok, belongs = path.parent.name == stem, f"{REPEATS}/{stem}/{path.name}"
    else:
        return
    if not ok:
        raise InputError(
            f"{path}: holds the result of cell {cell_id!r}, whose place is {belongs} (a file "
            "copied or renamed); it is not a result of the cell its name says"
        )


def read_cells(run_dir: Path) -> list[CellResult]:
    """All cell results of a run, sorted by cell id."""
    folder = Path(run_dir) / CELLS
    if not folder.is_dir():
        return []
    return sorted((read_cell(p) for p in folder.glob("*.json")), key=lambda c: c.cell_id)


def write_processes(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """``processes.json``: one row per cell process (see the module doc)."""
    PROCESSES.write(Path(run_dir) / PROCESSES_JSON, {"cells": rows})


def read_processes(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``processes.json`` (InputError when it is missing or unreadable)."""
    return PROCESSES.read(Path(run_dir) / PROCESSES_JSON).get("cells") or []


# --- the record of a cell ----------------------------------------------------------------


def cell_fields(cell: CellSpec) -> dict[str, Any]:
    """The fields of a cell's result that come from the cell itself, the same whether it
    finished (:func:`harness.cell.runner.record`) or not (:func:`failed_result`)."""
    return {
        "cell_id": cell.cell_id,
        "dataset": cell.dataset,
        "strategy": cell.strategy_label,
        "precision": cell.precision,
        "seed": cell.seed,
        "deterministic": cell.deterministic,
        "target_accuracy": cell.target_accuracy,
    }


def failed_result(
    cell: CellSpec,
    error: str,
    *,
    wall_seconds: float,
    backend_name: str,
    status: str = "failed",
    extra: dict[str, Any] | None = None,
) -> CellResult:
    """The record of a cell that did not finish (or was skipped): its config and the error."""
    return CellResult(
        **cell_fields(cell),
        backend=backend_name,
        status=status,
        config={**cell.to_dict(), "cell_id": cell.cell_id},
        error=error,
        wall_seconds=wall_seconds,
        extra=extra or {},
    )
