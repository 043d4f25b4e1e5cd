"""A real round trip: a loopback HTTP server serves real archives; fetch, verify, prepare, load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import (
    folders_entry,
    http_server,
    make_image_folders,
    make_tar,
    make_zip,
    run_cli,
    sha256,
    write_manifest,
)
from PIL import Image

from harness.datasets import cache
from harness.datasets.loader import iterate_batches, open_split
from harness.datasets.prepare import ensure_prepared
from harness.datasets.weights import resolve_weights
from harness.errors import InputError, IntegrityError
from harness.manifest import load_manifest

SPLITS = {"train": {"cat": 6, "dog": 5, "owl": 4}, "val": {"cat": 2, "dog": 2, "owl": 2}}
COUNTS = {"train": 15, "val": 6}
CLASSES = ["cat", "dog", "owl"]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def test_https_tar_gz_fetch_verify_prepare_load(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_image_folders(env / "src", SPLITS)
    archive = make_tar(src, env / "pets.tar.gz", arcname="pets-v1")  # wrapped in one folder
    with http_server() as server:
        server.routes["/files/pets.tar.gz"] = ("ok", archive.read_bytes(), 0)
        url = server.url("/files/pets.tar.gz")
        write_manifest(env / "home", {"pets": folders_entry(url, archive, CLASSES, COUNTS)})

        code, out, _ = run_cli(capsys, "data", "list", "--json")
        assert code == 0
        assert json.loads(out) == [
            {
                "name": "pets",
                "kind": "dataset",
                "source": "https",
                "status": "pinned",
                "pinned": True,
                "fetched": False,
                "prepared": [],
                "description": "",
            }
        ]
        code, out, err = run_cli(capsys, "data", "fetch", "pets")
        assert code == 0, err
        assert (env / "data" / "archives" / "pets.tar.gz").read_bytes() == archive.read_bytes()
    # No network from here on: everything reads the verified local copy.
    code, out, err = run_cli(capsys, "data", "verify", "pets")
    assert code == 0, err
    assert f"sha256 {sha256(archive)}" in out
    code, out, err = run_cli(
        capsys, "data", "prepare", "pets", "--image-size", "16", "--image-size", "24"
    )
    assert code == 0, err
    assert "train 15, val 6" in out

    for split, count in COUNTS.items():
        data = open_split("pets", split, 24)
        assert data.images.shape == (count, 24, 24, 3) and data.images.dtype == np.uint8
        assert data.class_names == tuple(CLASSES) and data.num_classes == 3
        want = [i for i, c in enumerate(CLASSES) for _ in range(SPLITS[split][c])]
        assert data.labels.tolist() == want
    # Grayscale files are replicated to RGB (every third file of each class is "L").
    train = open_split("pets", "train", 16)
    gray = train.images[2]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert not (train.images[0][..., 0] == train.images[0][..., 1]).all()
    seen = np.concatenate([lb for _, lb in iterate_batches(train, 4, seed=0)])
    assert sorted(seen.tolist()) == sorted(train.labels.tolist())

    code, out, _ = run_cli(capsys, "data", "list", "--json")
    (row,) = json.loads(out)
    assert row["status"] == "prepared" and row["prepared"] == [16, 24]
    # Pin the prepared digest; ensure_prepared and verify then check against it.
    code, out, err = run_cli(capsys, "data", "pin", "pets", "--image-size", "16")
    assert code == 0, err
    pinned = load_manifest().dataset("pets").pinned_digest(16)
    assert pinned == cache.read_meta(cache.cache_dir("pets", 16))["digest"]
    assert ensure_prepared("pets", 16) == cache.cache_dir("pets", 16)
    code, out, err = run_cli(capsys, "data", "verify")
    assert code == 0 and out.count("\nok") + out.startswith("ok") == 3, out
    # Tampering is caught: a prepared byte, then the archive.
    images = cache.images_file(cache.cache_dir("pets", 24), "val")
    raw = bytearray(images.read_bytes())
    raw[-1] ^= 0xFF
    images.write_bytes(bytes(raw))
    code, out, err = run_cli(capsys, "data", "verify", "pets")
    assert code == 2 and "prepared 24px" in err and "changed since it was prepared" in err
    assert err.count("\n") == 1
    fetched = env / "data" / "archives" / "pets.tar.gz"
    fetched.write_bytes(fetched.read_bytes() + b"x")
    code, out, err = run_cli(capsys, "data", "verify", "pets")
    assert code == 2 and "size mismatch" in err and "(and 1 more above)" in err


def test_parallel_prepare_matches_one_worker_and_plain_pillow(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_image_folders(env / "src", SPLITS, seed=5, fmt="PNG")
    archive = make_zip(src, env / "pets.zip")
    entry = folders_entry(None, archive, CLASSES, COUNTS)
    write_manifest(env / "home", {"pets": entry})
    assert run_cli(capsys, "data", "fetch", "pets", "--from", str(archive))[0] == 0
    prepare = ("data", "prepare", "pets", "--image-size", "20", "--workers")
    assert run_cli(capsys, *prepare, "1")[0] == 0
    one = np.array(open_split("pets", "train", 20).images)
    digest_one = open_split("pets", "train", 20).digest
    code, _, err = run_cli(capsys, *prepare, "2")
    assert code == 0, err
    two = open_split("pets", "train", 20)
    assert two.digest == digest_one and np.array_equal(np.array(two.images), one)
    first = sorted((env / "data" / "archives" / "extracted" / "pets" / "train" / "cat").iterdir())
    plain = Image.open(first[0]).convert("RGB").resize((20, 20), Image.Resampling.BILINEAR)
    assert np.array_equal(one[0], np.asarray(plain))


def test_unpinned_input_is_refused_until_pinned(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_image_folders(env / "src", SPLITS)
    archive = make_tar(src, env / "pets.tar.gz")
    with http_server() as server:
        server.routes["/pets.tar.gz"] = ("ok", archive.read_bytes(), 0)
        entry = folders_entry(server.url("/pets.tar.gz"), archive, CLASSES, COUNTS, pinned=False)
        write_manifest(env / "home", {"pets": entry})
        code, _, err = run_cli(capsys, "data", "fetch", "pets")
        assert code == 2 and "unpinned" in err and "--allow-unpinned" in err
        assert not (env / "data" / "archives").exists()
        code, out, err = run_cli(capsys, "data", "fetch", "pets", "--allow-unpinned")
        assert code == 0 and sha256(archive) in out
    code, _, err = run_cli(capsys, "data", "prepare", "pets", "--image-size", "8")
    assert code == 2 and "unpinned" in err and err.count("\n") == 1
    code, _, _ = run_cli(capsys, "data", "verify", "pets")
    assert code == 2
    code, out, err = run_cli(capsys, "data", "pin", "pets")
    assert code == 0 and sha256(archive) in out
    source = load_manifest().dataset("pets").source
    assert source.sha256 == sha256(archive) and source.size == archive.stat().st_size
    assert run_cli(capsys, "data", "prepare", "pets", "--image-size", "8")[0] == 0
    with pytest.raises(InputError, match="not prepared at 12 px"):
        ensure_prepared("pets", 12)


def test_weights_fetch_pin_and_resolve(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blob = np.random.default_rng(0).bytes(50_000)
    shipped = env / "home" / "data" / "weights" / "tiny.weights.h5"
    shipped.parent.mkdir(parents=True)
    shipped.write_bytes(b"shipped weights")
    with http_server() as server:
        server.routes["/w.h5"] = ("ok", blob, 0)
        arch = {"model": "mobilenet_v2", "alpha": 1.0, "input_size": 224, "include_top": False}
        weights = {
            "net": {
                "source": {"type": "https", "url": server.url("/w.h5"), "size": len(blob)},
                "architecture": arch,
                "pretrained_on": "imagenet",
            },
            "tiny": {
                "source": {"type": "file", "path": "data/weights/tiny.weights.h5"},
                "architecture": arch,
                "pretrained_on": "synth-source",
            },
        }
        write_manifest(env / "home", {}, weights)
        with pytest.raises(InputError, match="bench data fetch net"):
            resolve_weights("net")
        assert run_cli(capsys, "data", "fetch", "net")[0] == 2  # no hash: refused
        assert run_cli(capsys, "data", "fetch", "net", "--allow-unpinned")[0] == 0
    with pytest.raises(IntegrityError, match="unpinned"):
        resolve_weights("net")
    assert resolve_weights("net", allow_unpinned=True).read_bytes() == blob
    assert run_cli(capsys, "data", "pin", "net")[0] == 0
    assert run_cli(capsys, "data", "pin", "tiny")[0] == 0
    assert resolve_weights("net").read_bytes() == blob
    assert resolve_weights("tiny") == shipped
    shipped.write_bytes(b"tampered weights")
    with pytest.raises(IntegrityError, match=r"expected .* got"):
        resolve_weights("tiny")
    _, out, _ = run_cli(capsys, "data", "list", "--json")
    status = {row["name"]: (row["kind"], row["status"]) for row in json.loads(out)}
    assert status == {"net": ("weights", "fetched"), "tiny": ("weights", "fetched")}
