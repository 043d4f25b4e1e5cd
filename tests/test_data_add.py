"""Bringing your own dataset: `bench data add` on a folder and on a GNU tar archive, then a
real training cell on each, through a profile file, ending in the report.

Everything lives in a temporary BENCH_HOME (its own manifest) and BENCH_DATA_DIR; the
repository's ``data/manifest.json`` is never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tinymatrix
from data_fixtures import (
    DS_STORE,
    apple_double,
    files_under,
    http_server,
    make_finder_zip,
    make_image_folders,
    png_declaring,
    run_cli,
    write_manifest,
)

from harness import runfolder
from harness.manifest import LocalSource, load_manifest

REPO = Path(__file__).resolve().parent.parent
BENCH = [sys.executable, "-m", "harness.cli"]
PROFILE = tinymatrix.toml(
    tinymatrix.group(["pets", "birds"], "scratch"),
    tolerances={"accuracy_points": 100.0, "throughput_relative": 0.9},
    drop=("steps_per_epoch",),
    epochs=1,
    augmentation="none",
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))
    write_manifest(tmp_path / "home", {})
    return tmp_path / "home"


def _manifest_bytes(home: Path) -> bytes:
    return (home / "data" / "manifest.json").read_bytes()


def _folder(tmp: Path) -> Path:
    """Train and test class folders, no val (the common case the issue reports)."""
    return make_image_folders(
        tmp / "pets", {"train": {"cat": 12, "dog": 12}, "test": {"cat": 2, "dog": 2}}
    )


def _tarball(tmp: Path) -> Path:
    """birds/{train,valid}/<class>/*.png wrapped in one folder, packed by GNU tar."""
    make_image_folders(
        tmp / "t" / "birds",
        {"train": {"owl": 8, "tit": 8, "wren": 8}, "valid": {"owl": 2, "tit": 2, "wren": 2}},
        fmt="PNG",
    )
    out = tmp / "birds.tar.gz"
    subprocess.run(["tar", "-czf", str(out), "-C", str(tmp / "t"), "birds"], check=True)
    return out


@pytest.mark.slow
def test_add_a_folder_and_an_archive(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _folder(tmp_path)
    before = _manifest_bytes(home)

    # No val split: refused with the way out, and nothing written anywhere.
    code, _, err = run_cli(capsys, "data", "add", "pets", "--from", str(folder))
    assert code == 2 and err.count("\n") == 1, err
    assert "no val split" in err and "--val-from-train 0.1" in err
    assert _manifest_bytes(home) == before
    assert files_under(tmp_path / "data") == {}

    code, out, err = run_cli(
        capsys, "data", "add", "pets", "--from", str(folder), "--val-from-train", "0.25"
    )
    assert code == 0, err
    entry = load_manifest().dataset("pets")
    assert entry.class_names == ("cat", "dog") and entry.channels == 3
    assert entry.splits == {"train": 18, "val": 6, "test": 4}
    assert entry.layout["val_from_train"] == {"fraction": 0.25, "seed": 0}
    assert isinstance(entry.source, LocalSource) and entry.source.filename == "pets.tar"
    packed = tmp_path / "data" / "archives" / "pets.tar"
    assert entry.source.sha256 == hashlib.sha256(packed.read_bytes()).hexdigest()
    assert entry.regime == {"data": "small", "domain": "similar"}
    assert "24 train images" not in (entry.regime_derived or "")  # counts after the carve
    assert "18 train images < 4000" in (entry.regime_derived or "")
    assert "derived" in out
    # The packed folder is reproducible: packing it again verifies against the pin.
    code, out, err = run_cli(capsys, "data", "fetch", "pets", "--from", str(folder))
    assert code == 0, err

    # An existing name is refused (manifest unchanged) unless --force.
    pinned = _manifest_bytes(home)
    code, _, err = run_cli(capsys, "data", "add", "pets", "--from", str(folder))
    assert code == 2 and "already in" in err and "--force" in err
    assert _manifest_bytes(home) == pinned

    archive = _tarball(tmp_path)
    code, out, err = run_cli(
        capsys,
        "data",
        "add",
        "birds",
        "--from",
        str(archive),
        "--regime",
        "data=small,domain=similar",
    )
    assert code == 0, err
    birds = load_manifest().dataset("birds")
    assert birds.class_names == ("owl", "tit", "wren")
    assert birds.splits == {"train": 24, "val": 6}
    assert birds.layout == {
        "format": "image-folders",
        "root": "birds",
        "splits": {"train": "train", "val": "valid"},
    }
    assert birds.source.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert birds.regime == {"data": "small", "domain": "similar"} and birds.regime_derived is None
    _, out, _ = run_cli(capsys, "data", "list", "--json")
    assert {r["name"]: r["status"] for r in json.loads(out)} == {
        "pets": "fetched",
        "birds": "fetched",
    }

    # The whole path: prepare one (the pre-flight prepares the other), run, report.
    code, out, err = run_cli(capsys, "data", "prepare", "pets", "--image-size", "32")
    assert code == 0, err
    profile = tmp_path / "mine.toml"
    profile.write_text(PROFILE)
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [*BENCH, "all", "--profile", str(profile), "--runs-dir", str(runs), "--run-id", "mine"],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.count("pre-flight: preparing birds at 32 px") == 1
    assert "preparing pets" not in proc.stderr  # already prepared
    for dataset, n_train, n_val in (("pets", 18, 6), ("birds", 24, 6)):
        res = runfolder.read_cell(
            runs / "mine" / "cells" / runfolder.cell_filename(f"{dataset}/scratch/float32/s0")
        )
        assert res.ok, res.error
        assert res.config["effective"]["train_examples"] == n_train
        assert res.config["effective"]["val_examples"] == n_val
        assert res.config["input"] == "real" and res.config["data_digests"]["prepared"]
    assert (runs / "mine" / "report" / "report.md").is_file()


def test_add_from_a_url(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = _tarball(tmp_path)
    with http_server() as server:
        server.routes["/files/birds.tar.gz"] = ("ok", archive.read_bytes(), 0)
        url = server.url("/files/birds.tar.gz")
        code, _, err = run_cli(capsys, "data", "add", "birds", "--from", url)
        assert code == 0, err
    birds = load_manifest().dataset("birds")
    assert birds.source.url == url and birds.source.filename == "birds.tar.gz"
    assert birds.source.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert birds.regime_derived and "bench data add" in birds.regime_derived


def test_add_refuses_a_file_that_is_not_an_image(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _folder(tmp_path)
    (folder / "train" / "cat" / "notes.txt").write_text("not a picture\n")
    before = _manifest_bytes(home)
    code, _, err = run_cli(
        capsys, "data", "add", "pets", "--from", str(folder), "--val-from-train", "2"
    )
    assert code == 2 and err.count("\n") == 1
    assert "notes.txt" in err and "not an image" in err
    # Named where the user has it, not by the temporary extraction.
    assert f"{folder / 'train' / 'cat' / 'notes.txt'}: not an image" in err
    assert ".add-" not in err and str(tmp_path / "data") not in err
    assert _manifest_bytes(home) == before
    assert [p for p in (tmp_path / "data").rglob("*") if p.is_file()] == []


# --- platform metadata: Mac and Windows folders and archives ----------------------------

PETS = {"train": {"cat": 6, "dog": 6}, "test": {"cat": 2, "dog": 2}}


def _metadata_members(archive: Path) -> list[str]:
    """The members of ``archive`` that are platform metadata files, by their own names."""
    names = zipfile.ZipFile(archive).namelist()
    return [
        n
        for n in names
        if not n.endswith("/") and ("__MACOSX/" in n or n.rsplit("/", 1)[-1] == ".DS_Store")
    ]


def test_add_a_zip_made_by_macos_finder(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finder's "Compress": __MACOSX/ with an AppleDouble ._<name> per file, a .DS_Store.
    Issue 16: exit 2 with `class folder …/__MACOSX is empty`."""
    archive = make_finder_zip(
        make_image_folders(tmp_path / "src" / "pets", PETS), tmp_path / "pets.zip"
    )
    metadata = _metadata_members(archive)
    assert len(metadata) == 16 + 2  # one ._ per image, the .DS_Store and its ._
    code, out, err = run_cli(
        capsys, "data", "add", "pets", "--from", str(archive), "--val-from-train", "2"
    )
    assert code == 0, err
    entry = load_manifest().dataset("pets")
    assert entry.class_names == ("cat", "dog")
    assert entry.splits == {"train": 8, "val": 4, "test": 4}
    assert entry.layout["root"] == "pets"
    said = [line for line in out.splitlines() if line.startswith("ignored ")]
    assert len(said) == 1 and said[0].startswith("ignored 18 platform metadata files"), out
    assert "e.g. 'pets/.DS_Store'" in said[0]
    # Never extracted: nothing of it on disk.
    extracted = tmp_path / "data" / "archives" / "extracted" / "pets"
    on_disk = [p.name for p in extracted.rglob("*")]
    assert "__MACOSX" not in on_disk and ".DS_Store" not in on_disk
    assert not [n for n in on_disk if n.startswith("._")]

    # Fetching the same archive again (as a new clone would) says the same, in one line.
    code, out, err = run_cli(capsys, "data", "fetch", "pets", "--from", str(archive))
    assert code == 0, err
    assert out.count("\n") == 1 and "ignored 18 platform metadata files" in out

    code, out, err = run_cli(capsys, "data", "prepare", "pets", "--image-size", "16")
    assert code == 0, err
    assert "train 8" in out and "val 4" in out and "test 4" in out and "2 classes" in out

    # A folder extracted before metadata was left out (an older harness) reads the same.
    (extracted / "__MACOSX" / "pets" / "train" / "cat").mkdir(parents=True)
    (extracted / "__MACOSX" / "pets" / "train" / "cat" / "._000.jpg").write_bytes(apple_double({}))
    (extracted / "pets" / "train" / "dog" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" * 128)
    code, out, err = run_cli(capsys, "data", "prepare", "pets", "--image-size", "12")
    assert code == 0, err
    assert "train 8" in out and "2 classes" in out


def test_add_a_folder_from_mac_and_windows(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Finder zip unpacked by Info-ZIP unzip (so __MACOSX/ sits beside the data), then
    opened on Windows (Thumbs.db, desktop.ini) and copied through a FAT drive (._<name>)."""
    if shutil.which("unzip") is None:
        pytest.skip("unzip is not installed (apt-get install unzip)")
    archive = make_finder_zip(
        make_image_folders(tmp_path / "src" / "pets", PETS), tmp_path / "pets.zip"
    )
    folder = tmp_path / "unzipped"
    subprocess.run(["unzip", "-q", str(archive), "-d", str(folder)], check=True)
    assert (folder / "__MACOSX" / "pets" / "train" / "cat" / "._000.jpg").is_file()
    cat = folder / "pets" / "train" / "cat"
    (cat / "Thumbs.db").write_bytes(bytes.fromhex("d0cf11e0a1b11ae1") + b"\0" * 504)
    (cat / "desktop.ini").write_text("[.ShellClassInfo]\r\nIconResource=C:\\x.ico,0\r\n")
    (cat / "._001.jpg").write_bytes(apple_double({"com.apple.lastuseddate#PS": b"\0" * 16}))
    (folder / "pets" / "test" / ".DS_Store").write_bytes(DS_STORE)

    code, out, err = run_cli(
        capsys, "data", "add", "pets", "--from", str(folder), "--val-from-train", "2"
    )
    assert code == 0, err
    entry = load_manifest().dataset("pets")
    assert entry.class_names == ("cat", "dog")
    assert entry.splits == {"train": 8, "val": 4, "test": 4}
    # 18 from the Finder zip, Thumbs.db, desktop.ini, a ._ and a .DS_Store.
    assert "ignored 22 platform metadata files" in out, out

    # Windows writing another Thumbs.db does not change the packed folder: still verifies.
    (folder / "pets" / "train" / "dog" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" * 64)
    code, out, err = run_cli(capsys, "data", "fetch", "pets", "--from", str(folder))
    assert code == 0, err
    assert "ignored 23 platform metadata files" in out


# --- decompression bombs and files that are not images, named as the user knows them ---


def _bomb_tree(tmp: Path) -> Path:
    folder = make_image_folders(
        tmp / "pets", {"train": {"cat": 3, "dog": 3}, "val": {"cat": 1, "dog": 1}}
    )
    (folder / "train" / "cat" / "huge.png").write_bytes(png_declaring(200_000, 200_000))
    return folder


@pytest.mark.parametrize("given", ["zip", "folder"])
def test_add_refuses_an_image_declaring_a_huge_size(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], given: str
) -> None:
    """A PNG whose header declares 200,000 × 200,000 px: exit 2 naming the member (issue
    16: `internal error: DecompressionBombError`, exit 3)."""
    folder = _bomb_tree(tmp_path / "src")
    if given == "zip":
        if shutil.which("zip") is None:
            pytest.skip("zip is not installed (apt-get install zip)")
        source = tmp_path / "pets.zip"
        subprocess.run(["zip", "-q", "-r", str(source), "pets"], cwd=tmp_path / "src", check=True)
        named = f"member 'pets/train/cat/huge.png' of {source}"
    else:
        source = folder
        named = str(folder / "train" / "cat" / "huge.png")
    before = _manifest_bytes(home)
    code, _, err = run_cli(capsys, "data", "add", "pets", "--from", str(source))
    assert code == 2 and err.count("\n") == 1, err
    assert f"{named}: declares 40,000,000,000 pixels, above the decompression-bomb limit" in err
    assert "remove it and add the dataset again" in err
    assert ".add-" not in err and str(tmp_path / "data") not in err
    assert _manifest_bytes(home) == before
    assert [p for p in (tmp_path / "data").rglob("*") if p.is_file()] == []


def test_a_file_that_is_not_an_image_is_named_as_a_member(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_image_folders(tmp_path / "src" / "pets", {"train": {"cat": 3, "dog": 3}})
    (folder / "train" / "dog" / "notes.txt").write_text("not a picture\n")
    archive = shutil.make_archive(str(tmp_path / "pets"), "gztar", tmp_path / "src", "pets")
    code, _, err = run_cli(
        capsys, "data", "add", "pets", "--from", archive, "--val-from-train", "1"
    )
    assert code == 2 and err.count("\n") == 1, err
    assert f"member 'pets/train/dog/notes.txt' of {archive}: not an image" in err
    assert ".add-" not in err


@pytest.mark.parametrize(
    ("splits", "needles"),
    [
        (
            {"train": {"cat": 6}, "val": {"cat": 2}},
            ("1 class folder(s) in 'train' (cat)", "needs at least 2"),
        ),
        (
            {"train": {"cat": 6, "dog": 6}, "val": {"cat": 2, "fox": 2}},
            ("differ from the first split's", "'dog'", "'fox'"),
        ),
    ],
    ids=["one-class", "classes-differ-between-splits"],
)
def test_add_refuses_one_class_and_classes_that_differ_between_splits(
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    splits: dict,
    needles: tuple[str, ...],
) -> None:
    """Issue 18: a one-class folder was added (exit 0), then "trained" with loss 0."""
    folder = make_image_folders(tmp_path / "pets", splits)
    before = _manifest_bytes(home)
    code, _, err = run_cli(capsys, "data", "add", "pets", "--from", str(folder))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert all(n in err for n in needles), err
    assert _manifest_bytes(home) == before
    assert [p for p in (tmp_path / "data").rglob("*") if p.is_file()] == []
