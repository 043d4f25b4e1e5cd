"""The pre-flight of `bench all`: every cell's inputs checked before any cell starts.

A failed pre-flight exits 2 with one line per problem and creates no run folder; with
``--skip-unavailable`` the cells it can set aside are recorded as skipped, with the
reason. Names unknown to the manifest and a precision the device cannot run are input
errors before anything starts (issue 13, item 7); ``skip_if_unsupported`` records the
cell as skipped instead. Cells never prepare data: the parent did, once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import (
    folders_entry,
    make_image_folders,
    make_tar,
    run_cli,
    sha256,
    write_manifest,
)

from harness import runfolder
from harness.errors import InputError
from harness.matrix import parse_matrix
from harness.run import hostdevices, preflight

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
        r.cell_id: r
        for r in (runfolder.read_cell(p) for p in (runs / "b" / "cells").glob("*.json"))
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
    from harness.cell.runner import load_data

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


# --- issue 18: what the pre-flight must catch before any cell starts ----------------------

REPO = Path(__file__).resolve().parent.parent


def _bench(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, with this test's BENCH_HOME / BENCH_DATA_DIR."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *argv],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _refused(proc: subprocess.CompletedProcess[str], runs: Path, *needles: str) -> None:
    """Exit 2, one line naming the problem, no traceback, no run folder."""
    out = proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.returncode == 2, out
    progress, _, error = proc.stderr.partition("bench: error: pre-flight: ")
    assert error.count("\n") == 1, out  # one line; before it only the pre-flight's progress
    assert all(line.startswith("pre-flight: ") for line in progress.splitlines()), out
    assert "Traceback" not in proc.stderr and not runs.exists(), out
    assert all(n in error for n in needles), out


def _prepared_pets(home: Path) -> Path:
    """pets fetched and prepared at 32 px by the pre-flight itself; its cache folder."""
    from harness.datasets import archives, cache
    from harness.manifest import load_manifest

    archives.fetch_dataset(load_manifest().dataset("pets"), from_path=home / "pets.tar.gz")
    path = _profile(home, _group("pets"))
    matrix = parse_matrix(tomllib.loads(path.read_text()), path=path, profile="p")
    assert preflight.run(matrix.cells, say=lambda _: None).prepared == ("pets@32",)
    return cache.cache_dir("pets", 32)


def _data_offset(path: Path) -> int:
    with open(path, "rb") as fh:
        assert np.lib.format.read_magic(fh) == (1, 0)
        np.lib.format.read_array_header_1_0(fh)
        return fh.tell()


def _flip_pixel(folder: Path) -> None:
    path = folder / "train.images.npy"
    raw = bytearray(path.read_bytes())
    raw[_data_offset(path) + 1234] ^= 0x01  # one bit of one pixel of one training image
    path.write_bytes(bytes(raw))


def _flip_pixel_keep_mtime(folder: Path) -> None:
    path = folder / "train.images.npy"
    st = path.stat()
    _flip_pixel(folder)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, inode and mtime


def _truncate(folder: Path) -> None:
    path = folder / "val.images.npy"
    path.write_bytes(path.read_bytes()[:-100])


def _label_out_of_range(folder: Path) -> None:
    path = folder / "train.labels.npy"
    raw = bytearray(path.read_bytes())
    raw[-4:] = (7).to_bytes(4, "little")
    path.write_bytes(bytes(raw))


def _header(old: bytes, new: bytes) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        path = folder / "train.images.npy"
        raw = path.read_bytes()
        assert len(old) == len(new) and raw.count(old) == 1
        path.write_bytes(raw.replace(old, new))

    return change


@pytest.mark.parametrize(
    ("corrupt", "needles"),
    [
        (_flip_pixel, ("changed since it was prepared", "expected digest")),
        (_flip_pixel_keep_mtime, ("changed since it was prepared",)),
        (_truncate, ("val.images.npy is truncated", "bytes, its header needs")),
        (_label_out_of_range, ("train.labels.npy: label 7 is outside 0…1",)),
        (_header(b"(6, 32, 32, 3)", b"(5, 32, 32, 3)"), ("header says |u1 [5, 32, 32, 3]",)),
        (_header(b"'|u1'", b"'<i2'"), ("header says <i2 [6, 32, 32, 3]",)),
    ],
    ids=["flipped-pixel", "flipped-pixel-same-mtime", "truncated", "label", "shape", "dtype"],
)
def test_a_corrupted_prepared_cache_is_an_input_error_before_any_cell(
    home: Path, corrupt: Callable[[Path], None], needles: tuple[str, ...]
) -> None:
    """Issue 18: a flipped pixel byte trained with exit 0; a truncated file, a label out of
    range or an altered header failed inside the cell (exit 1)."""
    folder = _prepared_pets(home)
    corrupt(folder)
    runs = home / "runs"
    profile = _profile(home, _group("pets"))
    proc = _bench("all", "--profile", str(profile), "--runs-dir", str(runs), "--run-id", "r")
    _refused(proc, runs, "dataset 'pets' at 32 px", *needles)
    assert "rebuild it: `bench data prepare pets --image-size 32`" in proc.stderr
    assert _bench("data", "prepare", "pets", "--image-size", "32").returncode == 0
    assert preflight.run(
        parse_matrix(tomllib.loads(profile.read_text()), path=profile, profile="p").cells,
        say=pytest.fail,
    ) == preflight.Outcome({}, ())  # rebuilt: verified, nothing to prepare


def test_the_cache_is_rehashed_only_when_a_file_changed(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verification stays cheap: the digest of every byte is recomputed only when a file's
    signature (size, mtime, ctime, inode) differs from the one verified.json recorded."""
    from harness.datasets import cache

    folder = _prepared_pets(home)
    rehashed: list[Path] = []
    real = cache.digest_folder
    monkeypatch.setattr(cache, "digest_folder", lambda f: rehashed.append(f) or real(f))
    path = _profile(home, _group("pets"))
    cells = parse_matrix(tomllib.loads(path.read_text()), path=path, profile="p").cells
    for _ in range(3):  # recorded when the cache was published: no re-hash
        assert preflight.run(cells, say=pytest.fail).skipped == {}
    assert rehashed == [] and (folder / "verified.json").is_file()
    st = (folder / "val.labels.npy").stat()
    os.utime(folder / "val.labels.npy", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    preflight.run(cells, say=pytest.fail)
    preflight.run(cells, say=pytest.fail)
    assert rehashed == [folder]  # once, then recorded again
    (folder / "verified.json").unlink()
    preflight.run(cells, say=pytest.fail)
    assert rehashed == [folder, folder] and (folder / "verified.json").is_file()


def _npz_dataset(home: Path, train: list[int], val: list[int]) -> None:
    """``digits``: a local .npz (MedMNIST layout) with the given labels, classes a and b."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, labels in (("train", train), ("val", val)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.uint8)[:, None]
    npz = home / "digits.npz"
    np.savez_compressed(npz, **arrays)
    manifest = home / "home" / "data" / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["datasets"]["digits"] = {
        "source": {"type": "local", "filename": npz.name, "sha256": sha256(npz),
                   "size": npz.stat().st_size},
        "layout": {"format": "npz", "splits": {s: [f"{s}_images", f"{s}_labels"] for s in
                                              ("train", "val")}},
        "classes": ["a", "b"],
        "channels": 1,
        "splits": {"train": len(train), "val": len(val)},
    }  # fmt: skip
    manifest.write_text(json.dumps(raw))
    assert _bench("data", "fetch", "digits", "--from", str(npz)).returncode == 0


@pytest.mark.parametrize(
    ("train", "val", "prepared", "needle"),
    [
        ([0] * 10, [0] * 4, False, "its labels hold 1 class(es) ('a'), and a classifier needs"),
        ([0, 1] * 5, [0] * 4, True, "split 'val' has no image of class(es) 'b'"),
    ],
    ids=["one-class-prepared-by-the-preflight", "val-lacks-a-class-prepared-before"],
)
def test_a_dataset_of_one_class_or_classes_that_differ_between_splits_is_refused(
    home: Path, train: list[int], val: list[int], prepared: bool, needle: str
) -> None:
    """Issue 18: a one-class dataset ran "ok" with loss 0 and accuracy 0 in every epoch."""
    _npz_dataset(home, train, val)
    if prepared:
        assert _bench("data", "prepare", "digits", "--image-size", "32").returncode == 0
    runs = home / "runs"
    profile = _profile(home, _group("digits"))
    proc = _bench("all", "--profile", str(profile), "--runs-dir", str(runs), "--run-id", "r")
    _refused(proc, runs, "dataset 'digits' at 32 px", needle, "fix the dataset's source")


def test_warmup_steps_beyond_the_train_split_are_caught(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 18: warmup_steps >= every step a cell takes left nothing to time; the step count
    depends on the data (pets: 6 train images, batch 8 → 1 step per epoch)."""
    from harness.datasets import archives
    from harness.manifest import load_manifest

    archives.fetch_dataset(load_manifest().dataset("pets"), from_path=home / "pets.tar.gz")
    runs = home / "runs"
    profile = _profile(home, _group("pets", warmup_steps=3), _group("pets", "feature-extract"))
    code, _, err = run_cli(capsys, "all", "--profile", str(profile), "--runs-dir", str(runs))
    assert code == 2 and err.count("\n") == 1 and not runs.exists(), err
    assert (
        "cell pets/scratch/float32/s0: dataset 'pets': warmup_steps 3 leaves no train step" in err
    )
    assert "1 epoch(s) × 1 full batch(es) of 8 from 6 train images = 1 step(s)" in err


def _weights_home(home: Path) -> Path:
    """Weights ``w``: the repository's smoke weights file, copied and pinned."""
    src = REPO / "data" / "weights" / "mnv2-synth-a035-32.weights.h5"
    dest = home / "home" / "data" / "weights" / "w.weights.h5"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    manifest = home / "home" / "data" / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["weights"] = {
        "w": {
            "source": {"type": "file", "path": "data/weights/w.weights.h5",
                       "sha256": sha256(dest), "size": dest.stat().st_size},
            "architecture": {"model": "mobilenet_v2", "alpha": 0.35, "input_size": 32,
                             "include_top": False},
            "pretrained_on": "synth-source",
        }
    }  # fmt: skip
    manifest.write_text(json.dumps(raw))
    return dest


def _flip_weights_byte(home: Path, raw: dict, dest: Path) -> None:
    data = bytearray(dest.read_bytes())
    data[len(data) // 2] ^= 0x01
    dest.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda h, r, d: r["weights"]["w"]["source"].update(size=123), "size mismatch"),
        (lambda h, r, d: r["weights"]["w"]["source"].update(sha256="0" * 64), "sha256 mismatch"),
        (_flip_weights_byte, "sha256 mismatch"),
    ],
    ids=["size", "sha256", "flipped-byte"],
)
def test_weights_that_differ_from_their_pin_fail_the_preflight(
    home: Path, change: Callable[[Path, dict, Path], None], needle: str
) -> None:
    """Issue 18: these failed inside the cells (exit 1); they are bad input (exit 2)."""
    dest = _weights_home(home)
    manifest = home / "home" / "data" / "manifest.json"
    raw = json.loads(manifest.read_text())
    change(home, raw, dest)
    manifest.write_text(json.dumps(raw))
    group = _group("synthetic", "feature-extract", input="synthetic", num_classes=3, weights="w")
    profile = _profile(home, group)
    runs = home / "runs"
    proc = _bench("all", "--profile", str(profile), "--runs-dir", str(runs), "--run-id", "r")
    _refused(proc, runs, "weights 'w'", str(dest), needle, "expected ")


def test_devices_on_a_machine_without_a_gpu_are_refused(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 18: `--devices 0` on a CPU-only machine ran its cells on the CPU, "on GPU 0"."""
    _no_gpu()
    runs = home / "runs"
    profile = _profile(home, _group("synthetic", input="synthetic", num_classes=3))
    argv = ("all", "--profile", str(profile), "--runs-dir", str(runs), "--devices", "0")
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and not runs.exists(), err
    assert "pre-flight: --devices '0': no GPU is visible here" in err and "--jobs N" in err


def test_devices_are_checked_against_the_gpus_visible_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU side of the same check, with an ``nvidia-smi`` that lists GPUs 0 and 1 (no GPU
    is needed): visible ones pass, another index or a CPU-only backend build is refused."""
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(
        "#!/bin/sh\n"
        'case "$*" in *uuid*) printf "0, GPU-a0, NVIDIA H100, 9.0\\n'
        '1, GPU-b1, NVIDIA H100, 9.0\\n";; *) printf "0\\n1\\n";; esac\n'
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    hostdevices.nvidia_gpus.cache_clear()
    try:
        monkeypatch.setattr(hostdevices, "backend_uses_gpus", lambda name: True)
        preflight.check_devices(["0", "1"], "tensorflow")
        preflight.check_devices(["GPU-b1"], "tensorflow")
        with pytest.raises(InputError, match=r"--devices '0,5': GPU 5 is not visible here \("):
            preflight.check_devices(["0", "5"], "tensorflow")
        monkeypatch.setattr(hostdevices, "backend_uses_gpus", lambda name: False)
        with pytest.raises(InputError, match="the installed tensorflow is a CPU-only build"):
            preflight.check_devices(["0"], "tensorflow")
    finally:
        hostdevices.nvidia_gpus.cache_clear()
