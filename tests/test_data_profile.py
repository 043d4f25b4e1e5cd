"""`bench data fetch|prepare --profile P`: everything a matrix needs, from a loopback server.

What the nightly workflow used to work out with embedded Python: the datasets of its
real-input cells (not its synthetic-input ones), the pretrained weights of its pretrained
cells, and the image sizes each dataset is used at.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import (
    folders_entry,
    http_server,
    make_image_folders,
    make_tar,
    run_cli,
    sha256,
    write_manifest,
)

PROFILE = """
[tolerances]
accuracy_points = 5.0
throughput_relative = 0.5
[defaults]
alpha = 0.35
weights = "net"
[[cells]]
datasets = ["pets"]
strategies = ["scratch", "feature-extract"]
precisions = ["float32"]
seeds = [0]
image_size = 32
[[cells]]
datasets = ["pets", "birds"]
strategies = ["scratch"]
precisions = ["float32"]
seeds = [1]
image_size = 48
[[cells]]
datasets = ["synthetic-64"]
strategies = ["scratch"]
precisions = ["float32"]
seeds = [0]
input = "synthetic"
num_classes = 3
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def test_fetch_and_prepare_a_whole_profile(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_image_folders(env / "src", {"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}})
    archive = make_tar(src, env / "pets.tar.gz")
    blob = np.random.default_rng(0).bytes(20_000)
    profile = env / "nightly.toml"
    profile.write_text(PROFILE)
    with http_server() as server:
        server.routes["/pets.tar.gz"] = ("ok", archive.read_bytes(), 0)
        server.routes["/net.h5"] = ("ok", blob, 0)
        counts = {"train": 6, "val": 2}
        birds = folders_entry(None, archive, ["a", "b"], counts)
        birds["source"]["filename"] = "birds.zip"
        arch = {"model": "mobilenet_v2", "alpha": 0.35, "input_size": 32, "include_top": False}
        weights = {
            "net": {
                "source": {
                    "type": "https",
                    "url": server.url("/net.h5"),
                    "sha256": hashlib.sha256(blob).hexdigest(),
                    "size": len(blob),
                },
                "architecture": arch,
                "pretrained_on": "imagenet",
            }
        }
        datasets = {
            "pets": folders_entry(server.url("/pets.tar.gz"), archive, ["a", "b"], counts),
            "birds": birds,
        }
        write_manifest(env / "home", datasets, weights)

        # birds comes from a local archive nobody supplied: named, exit 2, the rest fetched.
        code, out, err = run_cli(capsys, "data", "fetch", "--profile", str(profile))
        assert code == 2 and err.count("\n") == 1, err
        assert "birds" in err and "--from PATH/birds.zip" in err and "--skip-unavailable" in err
        assert sorted(p for p, _ in server.requests) == ["/net.h5", "/pets.tar.gz"]
        server.requests.clear()
        code, out, err = run_cli(
            capsys, "data", "fetch", "--profile", str(profile), "--skip-unavailable"
        )
        assert code == 0, err
        assert "skipped birds" in out and "pets: already fetched" in out
        assert server.requests == []  # verified in place, nothing downloaded twice
    archives = env / "data" / "archives"
    assert (archives / "pets.tar.gz").read_bytes() == archive.read_bytes()
    assert (archives / "net.h5").read_bytes() == blob
    assert sha256(archives / "pets.tar.gz") == sha256(archive)

    code, _, err = run_cli(capsys, "data", "prepare", "--profile", str(profile))
    assert code == 2 and "birds" in err  # prepared what it could, named what it could not
    code, out, err = run_cli(
        capsys, "data", "prepare", "--profile", str(profile), "--skip-unavailable"
    )
    assert code == 0, err
    assert "pets: prepared at 32 px" in out and "pets: prepared at 48 px" in out
    _, out, _ = run_cli(capsys, "data", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["pets"]["prepared"] == [32, 48] and rows["birds"]["status"] == "pinned"
    assert rows["net"]["status"] == "fetched"
    code, _, err = run_cli(
        capsys, "data", "prepare", "--profile", str(profile), "--image-size", "32"
    )
    assert code == 2 and "--image-size and --profile" in err
