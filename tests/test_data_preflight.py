"""The pre-flight of `bench all`: every cell's inputs checked before any cell starts.

A failed pre-flight exits 2 with one line per problem and creates no run folder; with
``--skip-unavailable`` the cells it can set aside are recorded as skipped, with the
reason. Names unknown to the manifest and a precision the device cannot run are input
errors before anything starts (issue 13, item 7); ``skip_if_unsupported`` records the
cell as skipped instead. Cells never prepare data: the parent did, once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_fixtures import folders_entry, make_image_folders, make_tar, run_cli, write_manifest

from harness import hostdevices, preflight, results
from harness.errors import InputError
from harness.matrix import parse_matrix

HEAD = """
[tolerances]
accuracy_points = 5.0
throughput_relative = 0.5
[defaults]
image_size = 32
alpha = 0.35
weights = "none"
batch_size = 8
epochs = 1
warmup_steps = 0
"""


def _group(
    dataset: str, strategy: str = "scratch", precision: str = "float32", **more: object
) -> str:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in more.items())
    return (
        f'[[cells]]\ndatasets = ["{dataset}"]\nstrategies = ["{strategy}"]\n'
        f'precisions = ["{precision}"]\nseeds = [0]\n{extra}'
    )


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A manifest with: pets (fetched, good), tt (no val split), far (local, not here)."""
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    src = make_image_folders(tmp_path / "src", {"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}})
    pets = make_tar(src, tmp_path / "pets.tar.gz")
    tt = folders_entry(None, pets, ["a", "b"], {"train": 6, "test": 2})
    tt["source"]["filename"] = "tt.tar.gz"
    far = folders_entry(None, pets, ["a", "b"], {"train": 6, "val": 2})
    far["source"]["filename"] = "far.zip"
    datasets = {
        "pets": folders_entry(None, pets, ["a", "b"], {"train": 6, "val": 2}),
        "tt": tt,
        "far": far,
    }
    write_manifest(tmp_path / "home", datasets)
    return tmp_path


def _profile(home: Path, *groups: str) -> Path:
    path = home / "p.toml"
    path.write_text(HEAD + "\n".join(groups))
    return path


def _no_gpu() -> None:
    if hostdevices.nvidia_gpus():  # pragma: no cover - a GPU machine runs mixed_float16
        pytest.skip("a GPU is visible here: mixed_float16 is supported")


def test_failed_preflight_exits_2_with_one_line_per_problem_and_starts_nothing(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_gpu()
    profile = _profile(
        home,
        _group("nope"),  # a typo'd dataset
        _group("pets", "feature-extract", weights="ghost"),  # unknown weights
        _group("synthetic", precision="mixed_float16", input="synthetic", num_classes=3),
        _group("tt"),  # train + test only: no val
        _group("far"),  # a local archive that is not here
        _group("far", "feature-extract"),  # same problem, 2nd cell
    )
    runs = home / "runs"
    code, out, err = run_cli(
        capsys, "all", "--profile", str(profile), "--runs-dir", str(runs), "--run-id", "r"
    )
    assert code == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 5, err  # one line per problem; far's two cells share one
    assert lines[0].startswith("bench: error: pre-flight: ")
    assert all(line.startswith(("bench: error: pre-flight: ", "pre-flight: ")) for line in lines)
    text = "\n".join(lines)
    assert "cell nope/scratch/float32/s0: unknown dataset 'nope'" in text and "known: far" in text
    assert "unknown weights 'ghost'" in text
    assert "synthetic/scratch/mixed_float16/s0: precision mixed_float16 needs a GPU" in text
    assert "dataset 'tt' has no 'val' split" in text and "val_from_train" in text
    assert "2 cells (far/scratch/float32/s0, far/feature-extract-random/float32/s0)" in text
    assert "bench data fetch far --from PATH/far.zip" in text
    assert not (runs / "r").exists() and "Traceback" not in err


def test_skip_unavailable_records_the_reason(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_gpu()
    profile = _profile(
        home,
        _group("synthetic", precision="mixed_float16", input="synthetic", num_classes=3),
        _group("far"),
        _group(
            "s2",
            precision="mixed_float16",
            input="synthetic",
            num_classes=3,
            skip_if_unsupported=True,
        ),
    )
    runs = home / "runs"
    argv = ("all", "--profile", str(profile), "--runs-dir", str(runs), "--no-compare")
    # Without the flag: exit 2 (the skip_if_unsupported cell alone would not stop the run).
    code, _, err = run_cli(capsys, *argv, "--run-id", "a")
    assert code == 2 and len(err.strip().splitlines()) == 2, err
    assert "s2/" not in err and not (runs / "a").exists()
    code, out, err = run_cli(capsys, *argv, "--run-id", "b", "--skip-unavailable")
    assert code == 0, out + err
    assert "0 ok, 0 failed, 3 skipped" in out
    cells = {
        r.cell_id: r for r in (results.read_cell(p) for p in (runs / "b" / "cells").glob("*.json"))
    }
    assert {r.status for r in cells.values()} == {"skipped"}
    assert "mixed_float16 needs a GPU" in (cells["synthetic/scratch/mixed_float16/s0"].error or "")
    assert "--from PATH/far.zip" in (cells["far/scratch/float32/s0"].error or "")
    assert "mixed_float16 needs a GPU" in (cells["s2/scratch/mixed_float16/s0"].error or "")
    # Unknown names are never set aside: a typo stops the run even with the flag.
    profile = _profile(home, _group("nope"))
    code, _, err = run_cli(
        capsys, "all", "--profile", str(profile), "--runs-dir", str(runs), "--skip-unavailable"
    )
    assert code == 2 and "unknown dataset 'nope'" in err


def test_backend_not_installed_is_caught_before_any_cell(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    if importlib.util.find_spec("torch") is not None:  # pragma: no cover
        pytest.skip("torch is installed here")
    monkeypatch.setenv("KERAS_BACKEND", "torch")  # what a plain install without the extra meets
    profile = _profile(home, _group("synthetic", input="synthetic", num_classes=3))
    runs = home / "runs"
    code, _, err = run_cli(capsys, "all", "--profile", str(profile), "--runs-dir", str(runs))
    assert code == 2 and err.count("\n") == 1, err
    assert "the torch backend cannot run here: torch not installed" in err
    assert not runs.exists()


def test_data_is_prepared_once_in_the_parent_and_cells_never_prepare(home: Path) -> None:
    from harness.runner import load_data

    path = _profile(home, _group("pets"), _group("pets", "feature-extract"))
    import tomllib

    matrix = parse_matrix(tomllib.loads(path.read_text()), path=path, profile="p")
    cell = matrix.cells[0]
    # A cell started on its own finds no cache and says so; it builds nothing.
    with pytest.raises(InputError, match="cells never prepare data"):
        load_data(cell)
    assert not (home / "data" / "prepared" / "pets" / "32").exists()
    # Not fetched: the local archive must be given. Then the pre-flight fetches nothing
    # more and prepares pets@32 once for both cells.
    from harness.datasets import archives
    from harness.manifest import load_manifest

    archives.fetch_dataset(load_manifest().dataset("pets"), from_path=home / "pets.tar.gz")
    said: list[str] = []
    out = preflight.run(matrix.cells, say=said.append)
    assert out.skipped == {} and out.prepared == ("pets@32",)
    assert said == ["pre-flight: preparing pets at 32 px"]
    assert load_data(cell).x_train.shape == (6, 32, 32, 3)
    assert preflight.run(matrix.cells, say=said.append).prepared == ()  # cached now


def test_dry_run_needs_no_data_and_fetches_nothing(home: Path) -> None:
    path = _profile(home, _group("far"), _group("tt"))
    import tomllib

    matrix = parse_matrix(tomllib.loads(path.read_text()), path=path, profile="p")
    out = preflight.run(matrix.cells, dry_run=True, say=pytest.fail)
    assert out == preflight.Outcome({}, ())
    assert not (home / "data").exists()


def test_not_enough_disk_for_the_caches(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = home / "home" / "data" / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["datasets"]["pets"]["splits"] = {"train": 10_000_000, "val": 1_000_000}
    raw["datasets"]["pets"]["source"].update(type="https", url="http://127.0.0.1:9/pets.tar.gz")
    manifest.write_text(json.dumps(raw))
    profile = _profile(home, _group("pets").replace("[[cells]]", "[[cells]]\nimage_size = 224"))
    code, _, err = run_cli(capsys, "all", "--profile", str(profile), "--runs-dir", str(home / "r"))
    assert code == 2 and err.count("\n") == 1, err
    assert "not enough free disk" in err and "GiB needed" in err and "BENCH_DATA_DIR" in err
    assert not (home / "r").exists()
