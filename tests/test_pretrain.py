"""`bench pretrain` end to end on a tiny run, and the shipped weights against their manifest pin."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from harness import cli, jsonio
from harness.datasets import synthetic
from harness.errors import InputError
from harness.manifest import load_manifest
from harness.pretrain import SIDECAR_KIND, SIDECAR_SCHEMA, sidecar_path

ROOT = Path(__file__).resolve().parents[1]
NAME = "mnv2-synth-a035-32"


@pytest.fixture
def bench_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_HOME", str(ROOT))
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def _fresh_backbone(weights=None):
    import keras

    return keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=weights
    )


def _nearest_centroid_accuracy(backbone, data, num_classes: int) -> float:
    import keras

    def features(images):
        x = keras.applications.mobilenet_v2.preprocess_input(images.astype("float32"))
        return backbone.predict(x, verbose=0).max(axis=(1, 2))  # GlobalMaxPooling2D

    (x_train, y_train), (x_val, y_val) = data["train"], data["val"]
    f_train, f_val = features(x_train), features(x_val)
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_val = (f_train - mu) / sd, (f_val - mu) / sd
    centroids = np.stack([f_train[y_train == c].mean(0) for c in range(num_classes)])
    pred = ((f_val[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((pred == y_val).mean())


def _same_weights(a, b) -> bool:
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb, strict=True))


@pytest.mark.slow
def test_pretrain_tiny_run_end_to_end(bench_env, capsys):
    out = bench_env / "w" / "tiny.weights.h5"
    code = cli.main(
        [
            "pretrain",
            NAME,
            "--epochs",
            "1",
            "--limit",
            "128",
            "--eager",
            "--bn-momentum",
            "0.8",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert f"sha256 {digest}" in printed and f"({out.stat().st_size} bytes)" in printed
    # Written atomically: the weights and the sidecar, no temporary leftovers.
    assert {p.name for p in out.parent.iterdir()} == {out.name, sidecar_path(out).name}

    side = jsonio.read_json(sidecar_path(out), kind=SIDECAR_KIND, schema=SIDECAR_SCHEMA)
    assert side["weights"]["sha256"] == digest
    assert side["config"]["epochs"] == 1 and side["train_images"] == 128
    assert side["config"]["run_eagerly"] is True
    assert side["config"]["bn_momentum"] == 0.8
    assert (
        side["dataset"]["name"] == "synth-source" and len(side["dataset"]["prepared_digest"]) == 64
    )

    # The saved backbone loads both ways, and is not simply a fresh initialisation.
    loaded = _fresh_backbone(weights=str(out))
    again = _fresh_backbone()
    assert not _same_weights(loaded, again)
    again.load_weights(out)
    assert _same_weights(loaded, again)


def test_pretrain_refuses_bad_out_and_unknown_name(bench_env, capsys):
    assert cli.main(["pretrain", "no-such-weights"]) == 2
    assert "no-such-weights" in capsys.readouterr().err
    bad = bench_env / "x.h5"
    assert cli.main(["pretrain", NAME, "--epochs", "1", "--out", str(bad)]) == 2
    assert "x.h5" in capsys.readouterr().err
    assert not bad.exists()


def test_shipped_weights_match_manifest_and_load():
    manifest = load_manifest(ROOT / "data" / "manifest.json")
    entry = manifest.weight(NAME)
    path = ROOT / entry.source.path
    data = path.read_bytes()
    assert entry.sha256 and hashlib.sha256(data).hexdigest() == entry.sha256
    assert entry.size == len(data)
    assert entry.architecture == {
        "model": "mobilenet_v2",
        "alpha": 0.35,
        "input_size": 32,
        "include_top": False,
    }
    backbone = _fresh_backbone(weights=str(path))
    assert float(np.abs(backbone.get_layer("bn_Conv1").moving_mean.numpy()).max()) > 0.0

    # The weights transfer: a nearest-centroid classifier on their frozen (inference-mode)
    # features separates synth-few's classes, which the same on a random backbone cannot.
    few = manifest.dataset("synth-few")
    data = synthetic.generate(few.source, {"train": 200, "val": 100}, 32)
    assert _nearest_centroid_accuracy(backbone, data, few.num_classes) >= 0.5
    assert _nearest_centroid_accuracy(_fresh_backbone(), data, few.num_classes) < 0.4

    side = jsonio.read_json(sidecar_path(path), kind=SIDECAR_KIND, schema=SIDECAR_SCHEMA)
    assert side["weights"]["sha256"] == entry.sha256
    source = manifest.dataset(entry.pretrained_on)
    assert side["dataset"]["prepared_digest"] == source.pinned_digest(32)


def test_pretrain_model_gives_every_batchnorm_the_configured_momentum():
    import keras

    from harness.pretrain import PretrainConfig, build_model

    _, backbone = build_model(PretrainConfig(bn_momentum=0.9), num_classes=4)
    bns = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 52 and {layer.momentum for layer in bns} == {0.9}
    with pytest.raises(InputError, match=r"bn_momentum must be in \[0, 1\), got 1\.0"):
        PretrainConfig(bn_momentum=1.0)
