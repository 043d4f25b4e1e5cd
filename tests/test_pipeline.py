"""The end-of-run pipeline (compare -> report -> history -> MLflow) and the direction of imports."""

from __future__ import annotations

import ast
import graphlib
import importlib
from dataclasses import replace
from pathlib import Path

import pytest
import runkit

from harness.analysis import baseline
from harness.run import pipeline

HARNESS = Path(__file__).resolve().parent.parent / "harness"


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_HOME", str(tmp_path))


def _cells_with(cell_id: str, **changes: object) -> list:
    return [replace(c, **changes) if c.cell_id == cell_id else c for c in runkit.standard_cells()]


def test_end_of_run_without_and_with_baseline(tmp_path, capsys):
    run_dir = runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-base")
    assert pipeline.end_of_run(run_dir) == 0
    out = capsys.readouterr().out
    assert "no baseline for profile smoke" in out
    assert f"report: {run_dir / 'report' / 'report.md'}" in out
    # The history index of the runs folder is brought up to date after the report.
    assert out.index("report: ") < out.index("history: 1 runs indexed (1 new")
    assert (run_dir.parent / ".history.sqlite").is_file()
    baseline.accept(run_dir)
    cid = "synth-few/fine-tune/float32/s0"
    bad = runkit.write_run(tmp_path, _cells_with(cid, best_val_accuracy=0.5), run_id="r-bad")
    assert pipeline.end_of_run(bad) == 1
    out = capsys.readouterr().out
    assert "FAIL: run r-bad vs baseline r-base" in out and (bad / "report" / "report.md").is_file()
    assert "history: 2 runs indexed (1 new, 0 changed, 1 unchanged" in out
    # A stored baseline that cannot be used: exit 2 with one line, the report still written.
    bl = tmp_path / "reports" / "baselines" / "smoke.json"
    bl.write_text('{"kind": "transfer-bench.baseline", "schema": 99}')
    (bad / "report" / "report.md").unlink()
    assert pipeline.end_of_run(bad) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "schema 99 is not supported" in captured.err
    assert (bad / "report" / "report.md").is_file()
    # An explicit --baseline that does not exist is bad input, never "no baseline".
    assert pipeline.end_of_run(bad, baseline_path=tmp_path / "typo.json") == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "typo.json" in captured.err
    assert "no such file" in captured.err


def test_no_compare_still_indexes(tmp_path, capsys):
    run_dir = runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-1")
    assert pipeline.end_of_run(run_dir, compare_and_report=False) == 0
    out = capsys.readouterr().out
    assert "report:" not in out and "history: 1 runs indexed" in out
    assert not (run_dir / "report").exists()


def test_an_index_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, capsys):
    run_dir = runkit.write_run(tmp_path, runkit.standard_cells(), run_id="r-1")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    code = pipeline.end_of_run(run_dir, history_db=blocker / "h.sqlite")
    captured = capsys.readouterr()
    assert code == 2 and captured.err.count("\n") == 1 and "history index" in captured.err
    assert (run_dir / "report" / "report.md").is_file()


# The boxes of the design, from the bottom (infrastructure) up to the command line: a module
# may import its own box and the boxes below it, never one above it (late imports inside
# functions included). Every module of harness/ is in a box, so a new one must be placed.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("harness", "harness.errors", "harness.fsio", "harness.jsonio", "harness.paths"),
    ("harness.cpuinfo", "harness.threads", "harness.backends", "harness.backend"),
    ("harness.provenance", "harness.manifest", "harness.datasets", "harness.matrix"),
    ("harness.env", "harness.container"),
    ("harness.results", "harness.runfolder", "harness.stats", "harness.outputs"),
    ("harness.cell",),  # what runs inside a cell's process
    ("harness.executors",),  # where a cell's process runs
    ("harness.analysis",),  # compare, baseline, findings, report
    ("harness.history",),
    ("harness.dashboard", "harness.exporters"),
    ("harness.run",),  # the driver: pre-flight, orchestration, the end-of-run pipeline
    ("harness.perf", "harness.ab", "harness.gpucheck", "harness.pretrain"),  # side tools
    ("harness.commands", "harness.cli"),
)


def _layer(module: str) -> int | None:
    for i, names in enumerate(LAYERS):
        for n in names:
            if module == n or (n != "harness" and module.startswith(n + ".")):
                return i
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(HARNESS.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(HARNESS.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """Every harness module ``name`` (at ``path``) imports, at the top or inside a function:
    ``from harness.pkg import mod`` is the module ``harness.pkg.mod``, ``from harness.pkg
    import name`` the package. A module's own packages are left out: Python imports them
    first, whoever asks."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("harness")}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            module = ".".join([*base, node.module or ""]) if node.level else node.module or ""
            if module == "harness" or module.startswith("harness."):
                for a in node.names:
                    sub = f"{module}.{a.name}"
                    out.add(sub if sub in MODULES else module)
    return {m for m in out if not name.startswith(m + ".")} - {name}


def test_every_module_is_in_a_box_and_no_lower_box_imports_a_higher_one():
    problems = []
    for name, path in MODULES.items():
        mine = _layer(name)
        if mine is None:
            problems.append(f"{name} is in no box of LAYERS")
            continue
        importlib.import_module(name)  # and every module imports on its own
        for imported in sorted(_imports(name, path)):
            theirs = _layer(imported)
            if theirs is not None and theirs > mine:
                problems.append(f"{name} imports {imported}")
    assert problems == []


def test_no_import_cycle_even_through_late_imports():
    """No module reaches itself through imports, counting those inside functions: a late
    import may keep a start quick, never hide a circle."""
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")
