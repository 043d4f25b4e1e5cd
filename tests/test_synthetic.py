"""Synthetic datasets: deterministic, independent per split, well-formed, pinned in the manifest."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from harness.datasets import synthetic
from harness.datasets.cache import prepared_digest
from harness.errors import InputError
from harness.manifest import SyntheticSource, load_manifest

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ("synth-source", "synth-few", "synth-many", "synth-xray")


@pytest.fixture(scope="module")
def manifest():
    return load_manifest(ROOT / "data" / "manifest.json")


def _digest(source, splits, size=32):
    arrays = synthetic.generate(source, splits, size)
    return prepared_digest(synthetic.class_names(source), arrays)


@pytest.mark.parametrize("name", ["synth-few", "synth-xray"])
def test_same_seed_same_digest_other_seed_other_digest(manifest, name):
    source = manifest.dataset(name).source
    splits = {"train": 40, "val": 10}
    assert _digest(source, splits) == _digest(source, splits)
    assert _digest(replace(source, seed=source.seed + 1), splits) != _digest(source, splits)


def test_one_splits_size_does_not_change_another_split(manifest):
    source = manifest.dataset("synth-many").source
    small = synthetic.generate(source, {"train": 30, "val": 20}, 32)
    large = synthetic.generate(source, {"val": 20, "train": 130, "test": 7}, 32)
    assert np.array_equal(small["val"][0], large["val"][0])
    assert np.array_equal(small["val"][1], large["val"][1])
    assert not np.array_equal(small["train"][0], large["train"][0][:30])  # a real change


@pytest.mark.parametrize("name", SYNTH)
def test_shapes_dtypes_labels_and_balance(manifest, name):
    entry = manifest.dataset(name)
    names = synthetic.class_names(entry.source)
    assert len(names) == entry.num_classes
    if entry.class_names is not None:
        assert names == entry.class_names
    n = 3 * entry.num_classes + 2
    images, labels = synthetic.generate(entry.source, {"train": n}, 32)["train"]
    assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int32
    counts = np.bincount(labels, minlength=entry.num_classes)
    assert len(counts) == entry.num_classes and counts.max() - counts.min() <= 1
    assert images.std() > 20  # real pictures, not a constant fill
    assert len({im.tobytes() for im in images}) == n  # every image distinct


def test_xray_target_is_gray_and_shapes_are_colour(manifest):
    gray, _ = synthetic.generate(manifest.dataset("synth-xray").source, {"x": 16}, 32)["x"]
    assert manifest.dataset("synth-xray").channels == 1
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])
    colour, _ = synthetic.generate(manifest.dataset("synth-few").source, {"x": 16}, 32)["x"]
    assert not np.array_equal(colour[..., 0], colour[..., 1])


def test_other_image_sizes(manifest):
    images, _ = synthetic.generate(manifest.dataset("synth-few").source, {"x": 3}, 96)["x"]
    assert images.shape == (3, 96, 96, 3)


def test_classes_differ_in_form_not_only_noise(manifest):
    """Mean images per class differ (the class signal exists) for the xray target."""
    source = manifest.dataset("synth-xray").source
    images, labels = synthetic.generate(source, {"x": 400}, 32)["x"]
    x = images[..., 0].astype(np.float32)
    # The positive class adds a bright patch inside a lobe: brighter on average.
    assert x[labels == 1].mean() > x[labels == 0].mean() + 1.0


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        (SyntheticSource("nope-v9", 1, {}), "nope-v9"),
        (SyntheticSource("shapes-v1", 1, {"classes": ["disc-solid", "blob-solid"]}), "blob-solid"),
        (SyntheticSource("shapes-v1", 1, {"classes": ["disc-solid", "disc-solid"]}), "duplicates"),
        (SyntheticSource("xray-v1", 1, {"classes": ["a", "b"]}), "'a'"),
    ],
)
def test_bad_sources_are_refused_naming_the_value(source, needle):
    with pytest.raises(InputError, match=needle):
        synthetic.generate(source, {"train": 4}, 32)


def test_bad_split_size_is_refused(manifest):
    with pytest.raises(InputError, match="-3"):
        synthetic.generate(manifest.dataset("synth-few").source, {"train": -3}, 32)


def test_manifest_pins_every_synthetic_digest_at_32(manifest, tmp_path, monkeypatch):
    """The pinned prepared digests match what the generators make now (a changed generator fails).

    ``ensure_prepared`` generates each set into a fresh cache and refuses a digest mismatch.
    """
    from harness.datasets.prepare import ensure_prepared

    monkeypatch.setenv("BENCH_HOME", str(ROOT))
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path))
    for name in SYNTH:
        assert manifest.dataset(name).pinned_digest(32), f"{name} has no pinned digest at 32 px"
        folder = ensure_prepared(name, 32)
        assert (folder / "meta.json").is_file()
