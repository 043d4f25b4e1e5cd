"""Layout readers on real files: MedMNIST npz, CUB-200-2011 index files, a derived subset."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import http_server, make_image_folders, make_tar, run_cli, sha256, write_manifest
from PIL import Image

from harness.datasets import cache
from harness.datasets.loader import open_split


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def _local(archive: Path) -> dict:
    return {
        "type": "local",
        "filename": archive.name,
        "sha256": sha256(archive),
        "size": archive.stat().st_size,
    }


def test_pneumoniamnist_npz(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    counts = {"train": 12, "val": 4, "test": 5}
    arrays = {}
    for split, n in counts.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8)[:, None]
    npz = env / "pneumoniamnist_224.npz"
    np.savez_compressed(npz, **arrays)
    with http_server() as server:
        server.routes["/records/files/pneumoniamnist_224.npz?download=1"] = (
            "ok",
            npz.read_bytes(),
            0,
        )
        entry = {
            "source": {
                "type": "https",
                "url": server.url("/records/files/pneumoniamnist_224.npz?download=1"),
                "filename": "pneumoniamnist_224.npz",
                "md5": hashlib.md5(npz.read_bytes()).hexdigest(),  # md5 only
            },
            "layout": {
                "format": "npz",
                "splits": {s: [f"{s}_images", f"{s}_labels"] for s in counts},
            },
            "classes": ["normal", "pneumonia"],
            "channels": 1,
            "splits": counts,
        }
        write_manifest(env / "home", {"xray": entry})
        code, _, err = run_cli(capsys, "data", "fetch", "xray")
        assert code == 0, err
    code, _, err = run_cli(capsys, "data", "prepare", "xray", "--image-size", "28")
    assert code == 0, err
    assert run_cli(capsys, "data", "prepare", "xray", "--image-size", "16")[0] == 0
    for split, n in counts.items():
        same = open_split("xray", split, 28)
        assert same.images.shape == (n, 28, 28, 3)
        assert np.array_equal(same.images[..., 1], arrays[f"{split}_images"])  # no resize at 28
        assert np.array_equal(same.images[..., 0], same.images[..., 2])  # grayscale → RGB
        assert same.labels.tolist() == (np.arange(n) % 2).tolist()
        assert same.class_names == ("normal", "pneumonia")
    small = open_split("xray", "train", 16)
    plain = Image.fromarray(arrays["train_images"][3]).resize((16, 16), Image.Resampling.BILINEAR)
    assert np.array_equal(small.images[3, ..., 0], np.asarray(plain))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_cub_200_2011_index_files_and_seeded_val(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    archive = env / "CUB_200_2011.tgz"
    rng = np.random.default_rng(1)
    images, labels, split_rows = [], [], []
    with tarfile.open(archive, "w:gz") as tar:
        image_id = 0
        for c, cls in enumerate(classes, 1):
            for k in range(5):  # 4 train + 1 test per class
                image_id += 1
                buf = io.BytesIO()
                pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(buf, "JPEG")
                rel = f"{cls}/{cls.split('.')[1]}_{k:04d}.jpg"
                _add(tar, f"CUB_200_2011/images/{rel}", buf.getvalue())
                images.append(f"{image_id} {rel}")
                labels.append(f"{image_id} {c}")
                split_rows.append(f"{image_id} {1 if k < 4 else 0}")
        index = {
            "classes.txt": [f"{i} {c}" for i, c in enumerate(classes, 1)],
            "images.txt": images,
            "image_class_labels.txt": labels,
            "train_test_split.txt": split_rows,
        }
        for name, rows in index.items():
            _add(tar, f"CUB_200_2011/{name}", ("\n".join(rows) + "\n").encode())
    entry = {
        "source": _local(archive),
        "layout": {
            "format": "cub-200-2011",
            "root": "CUB_200_2011",
            "val_per_class": 1,
            "val_seed": 200,
        },
        "classes": {"count": 3},
        "channels": 3,
        "splits": {"train": 9, "val": 3, "test": 3},
    }
    write_manifest(env / "home", {"cub": entry})
    code, _, err = run_cli(capsys, "data", "fetch", "cub", "--from", str(archive))
    assert code == 0, err
    code, _, err = run_cli(capsys, "data", "prepare", "cub", "--image-size", "8")
    assert code == 0, err
    train, val, test = (open_split("cub", s, 8) for s in ("train", "val", "test"))
    assert train.class_names == ("Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross")
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert val.labels.tolist() == [0, 1, 2] and test.labels.tolist() == [0, 1, 2]
    digest = val.digest
    assert run_cli(capsys, "data", "prepare", "cub", "--image-size", "8")[0] == 0
    assert open_split("cub", "val", 8).digest == digest  # the seeded val carve is stable


def test_derived_subset_selects_parent_files_by_rule(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parent_classes = ["AVOCET", "BITTERN", "COOT", "DIPPER"]
    src = make_image_folders(
        env / "src",
        {
            "train": dict.fromkeys(parent_classes, 5),
            "valid": dict.fromkeys(parent_classes, 2),
        },
    )
    archive = make_tar(src, env / "birds.tar.gz", arcname="birds")
    parent = {
        "source": _local(archive),
        "layout": {"format": "image-folders", "splits": {"train": "train", "val": "valid"}},
        "classes": {"count": 4},
        "channels": 3,
        "splits": {"train": 20, "val": 8},
    }
    child = {
        "source": {
            "type": "derived",
            "parent": "birds",
            "rule": {"train_per_class": 3, "val_per_class": "all", "seed": 30},
        },
        "classes": ["COOT", "AVOCET"],
        "channels": 3,
        "splits": {"train": 6, "val": 4},
    }
    write_manifest(env / "home", {"birds": parent, "few": child})
    code, out, err = run_cli(capsys, "data", "fetch", "few", "--from", str(archive))
    assert code == 0 and "derived from 'birds'" in out, err
    for name in ("birds", "few"):
        code, _, err = run_cli(capsys, "data", "prepare", name, "--image-size", "8")
        assert code == 0, err
    few, whole = open_split("few", "train", 8), open_split("birds", "train", 8)
    assert few.class_names == ("COOT", "AVOCET") and few.labels.tolist() == [0, 0, 0, 1, 1, 1]
    for image, label in zip(few.images, few.labels, strict=True):
        parent_label = parent_classes.index(few.class_names[label])
        rows = whole.images[whole.labels == parent_label]
        assert any(np.array_equal(image, row) for row in rows)  # a parent image, same class
    assert len({bytes(i) for i in few.images}) == 6
    assert open_split("few", "val", 8).labels.tolist() == [0, 0, 1, 1]
    digest = few.digest
    assert run_cli(capsys, "data", "prepare", "few", "--image-size", "8")[0] == 0
    assert open_split("few", "train", 8).digest == digest  # same seed, same subset
    extracted = env / "data" / "archives" / "extracted"
    assert sorted(p.name for p in extracted.iterdir() if p.is_dir()) == ["birds"]  # no copy
    assert cache.read_meta(cache.cache_dir("few", 8))["source"] == {"type": "derived"}


def test_image_folders_without_val_are_refused_at_prepare(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A train/ + test/ dataset used to prepare fine and then fail every cell at run time."""
    src = make_image_folders(env / "src", {"train": {"a": 4, "b": 5}, "test": {"a": 1, "b": 1}})
    archive = make_tar(src, env / "tt.tar.gz")
    entry = {
        "source": _local(archive),
        "layout": {"format": "image-folders"},
        "classes": ["a", "b"],
        "channels": 3,
        "splits": {"train": 9, "test": 2},
    }
    write_manifest(env / "home", {"tt": entry})
    assert run_cli(capsys, "data", "fetch", "tt", "--from", str(archive))[0] == 0
    code, _, err = run_cli(capsys, "data", "prepare", "tt", "--image-size", "8")
    assert code == 2 and err.count("\n") == 1, err
    assert "no 'val' split" in err and "val_from_train" in err
    assert not (env / "data" / "prepared" / "tt" / "8").exists()


@pytest.mark.parametrize(
    ("rule", "per_class"),
    [({"fraction": 0.25, "seed": 7}, {"a": 1, "b": 2, "c": 3}), ({"count": 2}, None)],
    ids=["fraction", "count"],
)
def test_val_carved_from_train_per_class_seeded(
    env: Path, capsys: pytest.CaptureFixture[str], rule: dict, per_class: dict | None
) -> None:
    train = {"a": 4, "b": 6, "c": 11}
    src = make_image_folders(env / "src", {"train": train, "test": {"a": 1, "b": 1, "c": 1}})
    archive = make_tar(src, env / "tt.tar.gz")
    val = per_class or dict.fromkeys(train, rule.get("count"))
    n_val = sum(val.values())
    entry = {
        "source": _local(archive),
        "layout": {"format": "image-folders", "val_from_train": rule},
        "classes": ["a", "b", "c"],
        "channels": 3,
        "splits": {"train": sum(train.values()) - n_val, "val": n_val, "test": 3},
    }
    write_manifest(env / "home", {"tt": entry})
    assert run_cli(capsys, "data", "fetch", "tt", "--from", str(archive))[0] == 0
    code, _, err = run_cli(capsys, "data", "prepare", "tt", "--image-size", "8")
    assert code == 0, err
    t, v = open_split("tt", "train", 8), open_split("tt", "val", 8)
    assert {c: int((v.labels == i).sum()) for i, c in enumerate("abc")} == val
    assert {c: int((t.labels == i).sum()) for i, c in enumerate("abc")} == {
        c: train[c] - val[c] for c in train
    }
    t_rows = {bytes(x) for x in np.asarray(t.images)}
    v_rows = {bytes(x) for x in np.asarray(v.images)}
    assert not t_rows & v_rows and len(t_rows | v_rows) == sum(train.values())  # a partition
    digest = v.digest
    assert run_cli(capsys, "data", "prepare", "tt", "--image-size", "8")[0] == 0
    assert open_split("tt", "val", 8).digest == digest  # seeded: the same carve every time
