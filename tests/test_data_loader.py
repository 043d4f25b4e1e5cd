"""The loader (seeded batches from the memmapped cache) and synthetic caches on demand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import run_cli, write_manifest

from harness.datasets import cache
from harness.datasets.loader import iterate_batches, open_split
from harness.datasets.prepare import ensure_prepared
from harness.errors import InputError, IntegrityError
from harness.manifest import load_manifest

REPO_MANIFEST = Path(__file__).resolve().parents[1] / "data" / "manifest.json"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def _write_cache(n: int = 23, size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A cache whose image i is filled with the value i and labelled i % 3."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, 3))
    labels = (np.arange(n) % 3).astype(np.int32)
    with cache.CacheWriter("toy", size) as writer:
        writer.write_split("train", images, labels)
        writer.publish(("a", "b", "c"))
    return np.array(images), labels


def _order(split, **kw) -> list[int]:
    return [int(v) for images, _ in iterate_batches(split, 5, **kw) for v in images[:, 0, 0, 0]]


def test_open_split_memmaps_the_cache(env: Path) -> None:
    images, labels = _write_cache()
    split = open_split("toy", "train", 4)
    assert isinstance(split.images, np.memmap) and not split.images.flags.writeable
    assert np.array_equal(split.images, images) and np.array_equal(split.labels, labels)
    assert split.class_names == ("a", "b", "c") and split.num_classes == 3 and len(split) == 23
    assert split.digest == cache.prepared_digest(("a", "b", "c"), {"train": (images, labels)})
    assert split.digest == cache.digest_folder(cache.cache_dir("toy", 4))


def test_same_seed_same_order_other_seed_other_order(env: Path) -> None:
    _write_cache()
    split = open_split("toy", "train", 4)
    first = _order(split, seed=7)
    assert first == _order(split, seed=7)
    assert first != _order(split, seed=8)
    assert sorted(first) == list(range(23))  # every sample exactly once
    assert _order(split, seed=7, shuffle=False) == list(range(23))
    for images, labels in iterate_batches(split, 5, seed=3):
        assert images.dtype == np.uint8 and labels.dtype == np.int32
        assert np.array_equal(images[:, 0, 0, 0] % 3, labels)  # labels travel with their images
        images[:] = 0  # batches are private copies
    assert np.array_equal(open_split("toy", "train", 4).images[:, 0, 0, 0], np.arange(23))
    sizes = [len(lb) for _, lb in iterate_batches(split, 5, seed=1, drop_remainder=True)]
    assert sizes == [5, 5, 5, 5]
    assert [len(lb) for _, lb in iterate_batches(split, 5, seed=1)] == [5, 5, 5, 5, 3]
    with pytest.raises(InputError, match="batch_size must be >= 1, got 0"):
        next(iterate_batches(split, 0, seed=1))


def test_missing_cache_or_split_says_what_to_run(env: Path) -> None:
    with pytest.raises(InputError, match=r"'toy' is not prepared at 4 px.*bench data prepare toy"):
        open_split("toy", "train", 4)
    _write_cache()
    with pytest.raises(InputError, match=r"no split 'test' \(known: train"):
        open_split("toy", "test", 4)


def test_loader_does_not_import_tensorflow() -> None:
    code = (
        "import sys, harness.datasets.loader, harness.datasets.prepare;"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _synthetic_manifest(env: Path, seed: int | None = None, pin: str | None = None) -> None:
    repo = json.loads(REPO_MANIFEST.read_text())
    entry = dict(repo["datasets"]["synth-few"])
    entry["splits"] = {"train": 20, "val": 10}
    if seed is not None:
        entry["source"] = dict(entry["source"], seed=seed)
    entry["prepared"] = {"16": {"digest": pin}} if pin else {}
    write_manifest(env / "home", {"synth": entry})


def test_synthetic_is_generated_on_demand_and_pinned(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _synthetic_manifest(env)
    folder = ensure_prepared("synth", 16)
    digest = cache.read_meta(folder)["digest"]
    train = open_split("synth", "train", 16)
    assert train.images.shape == (20, 16, 16, 3) and len(open_split("synth", "val", 16)) == 10
    # Same seed, same digest, even when generated again from scratch.
    cache_files = cache.cache_dir("synth", 16)
    for f in cache_files.iterdir():
        f.unlink()
    cache_files.rmdir()
    assert cache.read_meta(ensure_prepared("synth", 16))["digest"] == digest
    # `bench data pin` records it; a run then checks against it.
    code, out, err = run_cli(capsys, "data", "pin", "synth", "--image-size", "16")
    assert code == 0 and digest in out, err
    assert load_manifest().dataset("synth").pinned_digest(16) == digest
    assert ensure_prepared("synth", 16) == folder
    # Another seed gives another digest; against the old pin it is refused, nothing written.
    _synthetic_manifest(env, seed=99, pin=digest)
    with pytest.raises(IntegrityError) as info:
        ensure_prepared("synth", 16)
    message = str(info.value)
    assert f"expected {digest}" in message and "got " in message and "generator" in message
    assert cache.read_meta(folder)["digest"] == digest  # the earlier cache is untouched
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [".16.lock"]  # no staging folder left behind
    code, _, err = run_cli(capsys, "data", "prepare", "synth", "--image-size", "16")
    assert code == 2 and "prepared digest mismatch" in err and err.count("\n") == 1
