"""Property-based tests (Hypothesis) of the parsers a user's file goes through.

For the manifest, a matrix, a cell result and a baseline: ANY input either parses or is
refused with the harness's :class:`~harness.errors.InputError` (one line, exit 2), never
another exception (a traceback, exit 3). Two kinds of input:

* byte strings: random bytes, and real files with random bytes spliced in;
* structured: the real, valid document with one value replaced by any JSON/TOML value,
  a key dropped or an unknown key added (what a careless edit or another tool does).

A baseline that parses must also compare and render (table and ``--json``) without error.
Examples are bounded for CI: profile ``ci`` (200 per test, no deadline); set
``BENCH_HYPOTHESIS=deep`` for 5000.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
import runkit
from conftest import REPO
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from harness import results, runfolder
from harness.analysis import baseline, compare, report
from harness.errors import InputError
from harness.manifest import load_manifest
from harness.matrix import load_matrix, parse_matrix

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "deep",
    parent=settings.get_profile("ci"),
    max_examples=5000,
)
BOUNDED = settings.get_profile(os.environ.get("BENCH_HYPOTHESIS", "ci"))

MANIFEST = (REPO / "data" / "manifest.json").read_bytes()
SMOKE = (REPO / "benchmarks" / "smoke.toml").read_bytes()

# Any JSON value (NaN and infinities included: json.dumps writes them, a careless tool may).
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# TOML has no null.
toml_values = st.recursive(
    scalars.filter(lambda v: v is not None),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def spliced(original: bytes) -> st.SearchStrategy[bytes]:
    """The original bytes with a random stretch replaced by random bytes."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        start = draw(st.integers(0, len(original)))
        end = draw(st.integers(start, min(len(original), start + 64)))
        return original[:start] + draw(st.binary(max_size=64)) + original[end:]

    return build()


any_bytes = st.binary(max_size=512)


@st.composite
def mutated(draw: st.DrawFn, document: Any, values: st.SearchStrategy[Any]) -> Any:
    """``document`` (JSON-like) with one place changed: a value replaced, a key dropped
    or an unknown key added."""
    doc = json.loads(json.dumps(document))
    node: Any = doc
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, dict | list) and child and draw(st.booleans()):
            node = child
            continue
        action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        if action == "replace":
            node[key] = draw(values)
        elif action == "drop":
            del node[key]
        elif isinstance(node, dict):
            node[draw(st.text(min_size=1, max_size=8))] = draw(values)
        else:
            node.append(draw(values))
        break
    return doc


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


# --- manifest --------------------------------------------------------------------------


@BOUNDED
@given(data=any_bytes | spliced(MANIFEST))
def test_manifest_bytes_parse_or_input_error(tmp_path_factory, data: bytes) -> None:
    path = _write(tmp_path_factory.mktemp("m"), "manifest.json", data)
    with contextlib.suppress(InputError):
        load_manifest(path)


@BOUNDED
@given(doc=mutated(json.loads(MANIFEST), json_values))
def test_manifest_values_parse_or_input_error(tmp_path_factory, doc: Any) -> None:
    path = _write(tmp_path_factory.mktemp("m"), "manifest.json", _dump(doc))
    with contextlib.suppress(InputError):
        load_manifest(path)


# --- matrix ----------------------------------------------------------------------------


@BOUNDED
@given(data=any_bytes | spliced(SMOKE))
def test_matrix_bytes_parse_or_input_error(tmp_path_factory, data: bytes) -> None:
    path = _write(tmp_path_factory.mktemp("t"), "fuzz.toml", data)
    with contextlib.suppress(InputError):
        load_matrix(str(path))


SMOKE_DOC = tomllib.loads(SMOKE.decode())


def _with(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of ``doc`` with the value at ``path`` replaced (explicit known faults)."""
    out = json.loads(json.dumps(doc))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@BOUNDED
@given(doc=mutated(SMOKE_DOC, toml_values))
@example(doc=_with(SMOKE_DOC, ("tolerances", "accuracy_points"), math.nan))  # gate off
@example(doc=_with(SMOKE_DOC, ("defaults", "learning_rate"), math.nan))
@example(doc=_with(SMOKE_DOC, ("defaults", "alpha"), 10**400))
def test_matrix_values_parse_or_input_error(doc: Any) -> None:
    try:
        matrix = parse_matrix(doc, path=Path("fuzz.toml"), profile="fuzz")
    except InputError:
        return
    # What parses is usable: ids, selection, the resolved JSON stored in run.json.
    assert all(c.cell_id for c in matrix.cells)
    json.dumps(matrix.to_dict(), allow_nan=False)
    tol = matrix.tolerances
    assert math.isfinite(tol.accuracy_points) and 0 <= tol.throughput_relative < 1


# --- cell results ----------------------------------------------------------------------

CELL_DOC = json.loads(  # as on disk: lists, not tuples
    json.dumps(
        {
            **results.to_dict(runkit.cell("synth-few", "fine-tune")),
            "kind": results.CELL_KIND,
            "schema": results.CELL_SCHEMA,
        }
    )
)


@BOUNDED
@given(data=any_bytes | spliced(_dump(CELL_DOC)))
def test_cell_bytes_parse_or_input_error(tmp_path_factory, data: bytes) -> None:
    path = _write(tmp_path_factory.mktemp("c"), "cell.json", data)
    with contextlib.suppress(InputError):
        runfolder.read_cell(path)


@BOUNDED
@given(doc=mutated(CELL_DOC, json_values))
@example(doc=_with(CELL_DOC, ("best_val_accuracy",), "0.9"))
@example(doc=_with(CELL_DOC, ("best_val_accuracy",), math.nan))
@example(doc=_with(CELL_DOC, ("test_accuracy",), 5.0))
@example(doc=_with(CELL_DOC, ("train_throughput", "images_per_s"), -1))
@example(doc=_with(CELL_DOC, ("history", 0, "loss"), "high"))
def test_cell_values_parse_or_input_error(tmp_path_factory, doc: Any) -> None:
    path = _write(tmp_path_factory.mktemp("c"), "cell.json", _dump(doc))
    try:
        cell = runfolder.read_cell(path)
    except InputError:
        return
    # What parses is usable: written back, compared with the original cell, tabled.
    json.dumps(results.to_dict(cell), allow_nan=False)
    original = results.cell_from_dict(CELL_DOC)
    info = results.RunInfo(
        run_id="r", profile="smoke", matrix={}, environment=runkit.environment(),
        manifest_digest="", git_commit=None, started_at="", cell_ids=(cell.cell_id,),
    )  # fmt: skip
    base = baseline.from_run(info, [original])
    json.loads(compare.render_json(compare.compare_cells(info, [cell], base)))
    report.matrix_rows([cell, original])
    report.pivot_rows([cell, original])


# --- baselines -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def accepted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A run folder and the baseline accepted from it (as a JSON document)."""
    root = tmp_path_factory.mktemp("baseline")
    run_dir = runkit.write_run(root, runkit.standard_cells(), run_id="r1")
    path, _ = baseline.accept(run_dir, path=root / "base.json")
    return run_dir, json.loads(path.read_text())


def _compare_renders(run_dir: Path, path: Path) -> None:
    base = baseline.load(path)
    info = runfolder.read_run(run_dir)
    comparison = compare.compare_cells(info, runfolder.read_cells(run_dir), base)
    compare.render_table(comparison)
    json.loads(compare.render_json(comparison))


@BOUNDED
@given(data=st.data())
def test_baseline_bytes_parse_or_input_error(tmp_path_factory, accepted, data) -> None:
    run_dir, doc = accepted
    raw = data.draw(any_bytes | spliced(_dump(doc)))
    path = _write(tmp_path_factory.mktemp("b"), "base.json", raw)
    with contextlib.suppress(InputError):
        _compare_renders(run_dir, path)


@BOUNDED
@given(data=st.data())
def test_baseline_values_parse_or_input_error_and_compare(tmp_path_factory, accepted, data):
    run_dir, doc = accepted
    path = _write(
        tmp_path_factory.mktemp("b"), "base.json", _dump(data.draw(mutated(doc, json_values)))
    )
    with contextlib.suppress(InputError):
        _compare_renders(run_dir, path)
