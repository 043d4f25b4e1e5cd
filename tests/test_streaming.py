"""Streaming input (harness.cell.streaming): same batches as in memory, flat memory, the path rule.

- The streamed batches of an epoch are exactly the in-memory gather of the same seeded
  order (through the bare reader and through the Keras PyDataset with reader threads),
  the last batch is the remainder, and each epoch has its own reproducible order.
- Training a model through the stream gives bit-identical weights to training it on the
  same batches held in memory.
- The peak RSS a real process adds while training through the stream (over its level
  once the model is built) on a prepared set 4× larger stays within 10 % (+16 MiB) of the
  small set's; the same process reading the large set whole adds at least half the
  set's size more, which shows the measurement can tell growth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tinymatrix

from harness.cell import streaming
from harness.datasets import cache
from harness.datasets.loader import iterate_batches, open_split
from harness.errors import InputError

REPO = Path(__file__).resolve().parent.parent


def _write(name: str, n: int, size: int, *, classes: int = 3, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with cache.CacheWriter(name, size) as writer:
        out = writer.images("train", n)
        for start in range(0, n, 512):
            k = min(512, n - start)
            out[start : start + k] = rng.integers(0, 256, (k, size, size, 3), dtype=np.uint8)
        out.flush()
        del out
        writer.labels("train", rng.integers(0, classes, n).astype(np.int32))
        writer.publish(tuple(f"c{i}" for i in range(classes)))


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_streamed_batches_equal_in_memory_gather(data_dir: Path) -> None:
    _write("s", 100, 8)
    split = open_split("s", "train", 8)
    whole = np.array(split.images)
    labels = np.array(split.labels)
    orders = []
    for epoch in (0, 1, 2):
        order = streaming.epoch_order(100, seed=7, epoch=epoch)
        orders.append(order)
        got = list(streaming.batches(split, 32, seed=7, epoch=epoch))
        assert [len(b[0]) for b in got] == [32, 32, 32, 4]  # the remainder, as fit does
        assert np.array_equal(np.concatenate([b[0] for b in got]), whole[order])
        assert np.array_equal(np.concatenate([b[1] for b in got]), labels[order])
        # the loader's in-memory iteration under the epoch's seed serves the same batches
        mem = list(iterate_batches(split, 32, seed=streaming.epoch_seed(7, epoch)))
        assert all(np.array_equal(g[0], m[0]) for g, m in zip(got, mem, strict=True))
    assert not np.array_equal(orders[0], orders[1])  # a new order every epoch
    assert np.array_equal(orders[0], streaming.epoch_order(100, seed=7, epoch=0))  # reproducible
    assert not np.array_equal(orders[0], streaming.epoch_order(100, seed=8, epoch=0))
    unshuffled = list(streaming.batches(split, 32, seed=7, shuffle=False))
    assert np.array_equal(np.concatenate([b[0] for b in unshuffled]), whole)


def test_pydataset_serves_the_epoch_orders(data_dir: Path) -> None:
    _write("p", 70, 8)
    split = open_split("p", "train", 8)
    whole = np.array(split.images)
    ds = streaming.stream(split, 16, seed=3, workers=2)
    assert len(ds) == 5 and ds.workers == 2 and not ds.use_multiprocessing
    for epoch in (0, 1):
        order = streaming.epoch_order(70, seed=3, epoch=epoch)
        got = [ds[i] for i in range(len(ds))]
        assert [len(x) for x, _ in got] == [16, 16, 16, 16, 6]
        assert np.array_equal(np.concatenate([x for x, _ in got]), whole[order])
        assert got[0][0].flags.c_contiguous and got[0][0].dtype == np.uint8
        ds.epoch_callback().on_epoch_begin(epoch + 1)  # what fit does as the next epoch begins
    with pytest.raises(IndexError):
        ds[len(ds)]
    later = streaming.stream(split, 16, seed=3, initial_epoch=1)  # a second stage continues
    assert np.array_equal(later[0][0], whole[streaming.epoch_order(70, seed=3, epoch=1)[:16]])


def test_training_through_the_stream_equals_training_in_memory(data_dir: Path) -> None:
    """Same batches in the same order give the same weights, bit for bit (reader threads
    and the PyDataset adapter on; three epochs over two fits, as two stages would run)."""
    import keras

    _write("t", 90, 8, classes=4)
    split = open_split("t", "train", 8)
    x, y = np.array(split.images), np.array(split.labels)

    def model() -> keras.Model:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, 3), dtype="uint8")
        h = keras.layers.Rescaling(1 / 255)(inputs)
        h = keras.layers.Flatten()(h)
        out = keras.layers.Dense(4, activation="softmax")(h)
        m = keras.Model(inputs, out)
        m.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        return m

    streamed = model()
    ds = streaming.stream(split, 32, seed=11, workers=2)
    for first, last in ((0, 1), (1, 3)):
        streamed.fit(
            ds, initial_epoch=first, epochs=last, shuffle=False, verbose=0,
            callbacks=[ds.epoch_callback()],
        )  # fmt: skip
    in_memory = model()
    for epoch in (0, 1, 2):
        order = streaming.epoch_order(len(y), seed=11, epoch=epoch)
        in_memory.fit(x[order], y[order], batch_size=32, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(streamed.get_weights(), in_memory.get_weights(), strict=True):
        assert np.array_equal(a, b)


def test_row_reader_reads_memmap_and_array_alike(data_dir: Path) -> None:
    _write("r", 40, 4)
    split = open_split("r", "train", 4)
    assert isinstance(split.images, np.memmap)
    idx = np.array([5, 6, 7, 0, 39, 38, 12, 13])  # runs of consecutive rows and single rows
    from_file = streaming.RowReader(split.images)
    from_array = streaming.RowReader(np.array(split.images))
    assert np.array_equal(from_file.read(idx), np.array(split.images)[idx])
    assert np.array_equal(from_array.read(idx), np.array(split.images)[idx])
    from_file.close()


def test_choose_input_rule() -> None:
    mib = 2**20
    small = streaming.choose_input(10 * mib, available=16 * 2**30)
    assert small.path == "memory" and "read whole" in small.reason
    big = streaming.choose_input(8 * 2**30, available=16 * 2**30)
    assert big.path == "stream" and big.limit_bytes == streaming.IN_MEMORY_MAX_BYTES
    # little memory available: the limit shrinks to a fraction of it
    tight = streaming.choose_input(100 * mib, available=200 * mib)
    assert tight.path == "stream" and tight.limit_bytes == int(200 * mib * 0.25)
    assert streaming.choose_input(8 * 2**30, mode="memory").path == "memory"
    assert streaming.choose_input(1, mode="stream").path == "stream"
    assert set(small.to_dict()) == {"path", "reason", "data_bytes", "limit_bytes"}
    with pytest.raises(ValueError, match="'fast'"):
        streaming.choose_input(1, mode="fast")


# --- the memory bound ----------------------------------------------------------------------

# What a process's peak RSS is made of here: importing TensorFlow peaks near 1.4 GB, far
# above anything training adds, so a peak over the whole process cannot tell a 188 MiB
# dataset read whole from one streamed. The probe measures the peak *increment* during
# fit over the RSS once the model is built: Linux resets the high-water mark (VmHWM) on
# writing "5" to /proc/self/clear_refs; where that is refused, a thread samples VmRSS
# every 2 ms instead (it can miss a spike shorter than that, not a held dataset).
PROBE = r"""
import json, os, sys, threading, time
import numpy as np
import keras
from harness.cell import streaming
from harness.datasets.loader import open_split

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)

name, mode = sys.argv[1], sys.argv[2]
split = open_split(name, "train", 64)
keras.utils.set_random_seed(0)
inputs = keras.Input((64, 64, 3), dtype="uint8")
h = keras.layers.Rescaling(1 / 255)(inputs)
h = keras.layers.AveragePooling2D(8)(h)
h = keras.layers.Flatten()(h)
out = keras.layers.Dense(3, activation="softmax")(h)
model = keras.Model(inputs, out)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")

base = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    method, peak = "VmHWM reset", None
except OSError:
    method, peak, done = "VmRSS sampled", [base], threading.Event()
    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], status("VmRSS"))
            time.sleep(0.002)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
if mode == "stream":
    ds = streaming.stream(split, 256, seed=0)
    model.fit(ds, epochs=2, shuffle=False, verbose=0, callbacks=[ds.epoch_callback()])
else:  # the split read whole, arrays to fit (what the runner does for small sets)
    x, y = np.ascontiguousarray(split.images), np.asarray(split.labels)
    model.fit(x, y, batch_size=256, epochs=2, shuffle=True, verbose=0)
if peak is None:
    top = status("VmHWM")
else:
    done.set()
    sampler.join()
    top = max(peak[0], status("VmRSS"))
print(json.dumps({"base_kib": base, "peak_kib": top, "method": method}))
"""

# Streamed peaks may differ by this much whatever the dataset (allocator and tracing
# noise), on top of 10 % of the small set's increment.
FLOOR_KIB = 16 * 1024


def _peak_increment(name: str, mode: str, env: dict[str, str]) -> tuple[int, str]:
    """KiB the process's RSS peaked above its level before fit, and how it was measured."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, name, mode],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return max(0, out["peak_kib"] - out["base_kib"]), out["method"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_peak_memory_does_not_grow_with_the_dataset(data_dir: Path) -> None:
    """4,000 vs 16,000 images of 64 px (47 vs 188 MiB): the increment of peak RSS over the
    built model's level during a 2-epoch fit stays within 10 % (+16 MiB) when streamed;
    reading the large set whole adds at least half its size more, which shows the
    measurement can tell growth when there is some."""
    _write("small", 4000, 64)
    _write("large", 16000, 64)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "BENCH_DATA_DIR": str(data_dir)}
    small, method = _peak_increment("small", "stream", env)
    large, _ = _peak_increment("large", "stream", env)
    whole, _ = _peak_increment("large", "memory", env)
    print(f"peak RSS over the built model ({method}): stream 4k +{small} KiB, "
          f"stream 16k +{large} KiB, whole 16k +{whole} KiB")  # fmt: skip
    assert large <= 1.10 * small + FLOOR_KIB, (small, large)
    large_bytes = 16000 * 64 * 64 * 3
    assert whole >= small + large_bytes // 2 // 1024, (small, whole)  # growth is visible


# --- on the runner's path ------------------------------------------------------------------

CELL_TOML = tinymatrix.toml(
    tinymatrix.group("synth-xray", ["feature-extract", "linear-probe"]),
    description="test_streaming: one small real-data cell",
    tolerances={"accuracy_points": 100.0, "throughput_relative": 0.9},
    drop=("steps_per_epoch",),
    batch_size=64,
    epochs=1,
    augmentation="none",
    dense_units=0,
    warmup_steps=2,
    inference_batch=16,
)


@pytest.mark.slow
def test_the_runner_streams_from_the_prepared_cache(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``$BENCH_INPUT_PATH=stream``: a cell trains, validates and tests through the stream
    (linear-probe computes its features from it), and its result says so; unforced, the
    same small set is read whole."""
    profile = tmp_path / "stream.toml"
    profile.write_text(CELL_TOML)
    env = {
        **os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "BENCH_DATA_DIR": str(data_dir),
        "BENCH_INPUT_PATH": "stream",
    }  # fmt: skip
    env.pop("BENCH_PROFILE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "all", "--profile", str(profile), "--runs-dir",
         str(tmp_path / "runs"), "--run-id", "s", "--no-compare"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    cells = tmp_path / "runs" / "s" / "cells"
    for name, fed in (("feature-extract-random", "PyDataset"), ("linear-probe-random", "features")):
        result = json.loads((cells / f"synth-xray__{name}__float32__s0.json").read_text())
        path = result["extra"]["input_path"]
        assert result["status"] == "ok" and path["path"] == "stream", path
        assert "BENCH_INPUT_PATH" in path["reason"] and fed in path["fed"]
        assert result["test_accuracy"] is not None and result["train_throughput"]["images_per_s"]

    import tomllib

    from harness.cell.runner import load_data
    from harness.matrix import parse_matrix

    cell = parse_matrix(tomllib.loads(CELL_TOML), path=profile, profile="p").cells[0]
    auto = load_data(cell)  # $BENCH_INPUT_PATH unset here: 3.5 MiB is read whole
    assert auto.choice is not None and auto.choice.path == "memory" and not auto.streamed
    monkeypatch.setenv(streaming.ENV_INPUT_PATH, "stream")
    data = load_data(cell)
    assert data.streamed and isinstance(data.x_train, np.memmap)
    monkeypatch.setenv(streaming.ENV_INPUT_PATH, "fast")
    with pytest.raises(InputError, match=r"\$BENCH_INPUT_PATH = 'fast'"):
        load_data(cell)
