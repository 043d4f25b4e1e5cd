"""Versioned records: every reader goes through its record's upgrades, on real older files.

``tests/recorded/run-1ed2cec/`` is a run folder written by the harness before the layout
change (commit 1ed2cec, one tiny synthetic cell; tests/recorded/README.md says how);
``baseline-schema1-smoke.json`` is a schema-1 baseline of an earlier wave. Both must stay
readable, and a schema bump must reach every reader through one upgrade function.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness import jsonio, results, runfolder
from harness.analysis import baseline
from harness.errors import InputError, SchemaError

RECORDED = Path(__file__).resolve().parent / "recorded"
OLD_RUN = RECORDED / "run-1ed2cec"
OLD_CELL = "tiny/scratch/float32/s0"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A copy of the recorded run folder (the test may not change the recorded one)."""
    return Path(shutil.copytree(OLD_RUN, tmp_path / OLD_RUN.name))


def test_a_run_folder_written_before_the_change_is_read(old_run: Path) -> None:
    info = runfolder.read_run(old_run)
    cells = runfolder.read_cells(old_run)
    assert info.run_id == "run-1ed2cec" and info.cell_ids == (OLD_CELL,)
    assert [c.cell_id for c in cells] == [OLD_CELL] and cells[0].ok
    assert cells[0].history and cells[0].weights_digest and cells[0].train_throughput
    assert runfolder.finished_cells(old_run, [OLD_CELL]) == {OLD_CELL}
    assert [r["cell_id"] for r in runfolder.read_processes(old_run)] == [OLD_CELL]
    # As a worker ships it back: the same record through the same header check.
    shipped = json.loads(runfolder.cell_path(old_run, OLD_CELL).read_text())
    assert results.parse_cell(shipped, "shipped") == cells[0]


def _bumped(monkeypatch: pytest.MonkeyPatch) -> None:
    """This harness as if the cell and run records were at schema 2, each with an upgrade
    from 1 (what the next bump will add): a mark in ``extra`` / ``tolerances``."""

    def cell_1_to_2(obj: dict) -> dict:
        return {**obj, "extra": {**obj["extra"], "upgraded_from": 1}}

    def run_1_to_2(obj: dict) -> dict:
        return {**obj, "tolerances": {**obj["tolerances"], "throughput_relative": 0.25}}

    monkeypatch.setattr(results, "CELL", jsonio.Record(results.CELL_KIND, 2, {1: cell_1_to_2}))
    monkeypatch.setattr(results, "RUN", jsonio.Record(results.RUN_KIND, 2, {1: run_1_to_2}))


def test_a_schema_bump_reaches_every_reader_through_one_upgrade(
    old_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cell_file = runfolder.cell_path(old_run, OLD_CELL)
    before = cell_file.read_bytes()
    _bumped(monkeypatch)
    info = runfolder.read_run(old_run)
    assert info.tolerances["throughput_relative"] == 0.25
    [cell] = runfolder.read_cells(old_run)
    assert cell.extra["upgraded_from"] == 1
    assert runfolder.read_cell(cell_file).extra["upgraded_from"] == 1
    shipped = results.parse_cell(json.loads(before), "shipped")  # the executors' path
    assert shipped.extra["upgraded_from"] == 1
    assert runfolder.finished_cells(old_run, [OLD_CELL]) == {OLD_CELL}  # resume keeps it
    assert cell_file.read_bytes() == before  # upgraded in memory, the file left as it is
    # What this harness writes is the new schema; it reads back without an upgrade.
    runfolder.write_cell(old_run, cell)
    assert json.loads(cell_file.read_text())["schema"] == 2
    assert runfolder.read_cell(cell_file) == cell


def test_a_newer_schema_and_one_without_an_upgrade_are_refused(
    old_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cell_file = runfolder.cell_path(old_run, OLD_CELL)
    newer = {**json.loads(cell_file.read_text()), "schema": results.CELL_SCHEMA + 1}
    cell_file.write_text(json.dumps(newer))
    with pytest.raises(InputError, match=r"schema 2 is not supported.*runs the cell again"):
        runfolder.read_cell(cell_file)  # --resume runs such a cell again
    monkeypatch.setattr(results, "RUN", jsonio.Record(results.RUN_KIND, 2))  # no upgrade
    with pytest.raises(SchemaError, match="schema 1 is not supported") as err:
        runfolder.read_run(old_run)
    assert "\n" not in err.value.message and "run.json" in err.value.message


def test_an_upgrade_that_fails_is_one_line_naming_the_file(tmp_path: Path) -> None:
    record = jsonio.Record("transfer-bench.example", 3, {1: lambda o: o, 2: lambda o: o["x"]})
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"kind": "transfer-bench.example", "schema": 1}))
    with pytest.raises(SchemaError, match="schema 2 could not be upgraded to 3") as err:
        record.read(path)
    assert str(path) in err.value.message and "\n" not in err.value.message


def test_the_schema_1_baseline_of_an_earlier_wave_is_upgraded(tmp_path: Path) -> None:
    old = RECORDED / "baseline-schema1-smoke.json"
    base = baseline.load(old, profile="smoke")
    assert json.loads(old.read_text())["schema"] == 1 and base.key_id and base.noise == {}
    path = baseline.write(base, tmp_path / "again.json")  # written as the current schema
    assert json.loads(path.read_text())["schema"] == baseline.BASELINE_SCHEMA
    assert baseline.load(path, profile="smoke").cells == base.cells


def test_an_unreadable_record_is_an_input_error_naming_the_file(old_run: Path) -> None:
    (old_run / "run.json").write_text('{"kind": "transfer-bench.run", "schema": 1}')
    with pytest.raises(InputError, match=r"run\.json"):
        runfolder.read_run(old_run)
