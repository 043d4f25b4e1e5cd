"""TensorBoard scalars per cell: the smoke run's event files exist, parse, and hold its numbers.

Reuses the session's real smoke run (``smoke_run_dir``: ``bench all --profile smoke``), so
the events were written by the runner exactly as a nightly run writes them. They are read
back with TensorBoard's own EventMultiplexer over the run folder, which is what
``tensorboard --logdir reports/runs/<run>`` does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from harness import runfolder
from harness.cell import tensorboard as tb

TRAIN_TAGS = {"epoch_loss", "epoch_accuracy", "epoch_learning_rate", tb.STEP_TIME_TAG, tb.RATE_TAG}
VALIDATION_TAGS = {"epoch_loss", "epoch_accuracy"}


def _scalars(mux: object, run: str, tag: str) -> dict[int, float]:
    import tensorflow as tf

    return {
        e.step: float(tf.make_ndarray(e.tensor_proto))
        for e in mux.Tensors(run, tag)  # type: ignore[attr-defined]
    }


def test_every_cell_writes_tensorboard_scalars(smoke_run_dir: Path):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    cells = [c for c in runfolder.read_cells(smoke_run_dir) if c.ok]
    assert cells, "the smoke run has no ok cell"
    mux = EventMultiplexer().AddRunsFromDirectory(str(smoke_run_dir))
    mux.Reload()
    runs = mux.Runs()
    for cell in cells:
        info = cell.extra["tensorboard"]
        assert info["status"] == "written", info
        base = tb.log_dir(smoke_run_dir, cell.cell_id)
        assert info["log_dir"] == str(base.relative_to(smoke_run_dir))
        assert list((base / "train").glob("events.out.tfevents.*"))
        train, val = f"{info['log_dir']}/train", f"{info['log_dir']}/validation"
        # The whole matrix in one logdir: every cell is a TensorBoard run with the tags.
        assert set(runs[train]["tensors"]) >= TRAIN_TAGS, (cell.cell_id, runs[train])
        assert set(runs[val]["tensors"]) >= VALIDATION_TAGS, (cell.cell_id, runs[val])
        # The scalars are the cell's own numbers, one per epoch.
        loss = _scalars(mux, train, "epoch_loss")
        assert sorted(loss) == [h.epoch for h in cell.history]
        for h in cell.history:
            assert loss[h.epoch] == pytest.approx(h.loss, rel=1e-6)
            assert _scalars(mux, val, "epoch_accuracy")[h.epoch] == pytest.approx(
                h.val_accuracy, rel=1e-6
            )
            assert _scalars(mux, train, "epoch_learning_rate")[h.epoch] == pytest.approx(
                h.learning_rate, rel=1e-6
            )
        step_times = _scalars(mux, train, tb.STEP_TIME_TAG)
        assert step_times and all(t > 0 for t in step_times.values())
        assert cell.train_throughput is not None
        if "train_throughput_stages" not in cell.extra:  # one fit: one segment of steps
            spread = cell.train_throughput.step_seconds
            assert all(spread.min <= t <= spread.max for t in step_times.values())


def _no_timer() -> object:
    return type("Timer", (), {"segments": []})()


def test_unavailable_tensorflow_is_said_not_failed(tmp_path: Path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name)
    )
    callbacks, info = tb.callbacks(tmp_path, "d/s/float32/s0", _no_timer(), batch_size=8)
    assert callbacks == [] and info["status"] == "unavailable"
    assert "TensorFlow is not installed" in info["reason"]
    assert not (tmp_path / "tensorboard").exists()


def test_switch_and_no_run_folder(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(tb.SWITCH, "0")
    assert tb.callbacks(tmp_path, "d/s/float32/s0", _no_timer(), batch_size=8) == (
        [],
        {"status": "disabled", "reason": "BENCH_TENSORBOARD=0"},
    )
    monkeypatch.delenv(tb.SWITCH)
    callbacks, info = tb.callbacks(None, "d/s/float32/s0", _no_timer(), batch_size=8)
    assert callbacks == [] and info["status"] == "off"
    callbacks, info = tb.callbacks(tmp_path, "d/s/float32/s0", _no_timer(), batch_size=8)
    assert len(callbacks) == 2 and info["log_dir"] == "tensorboard/d__s__float32__s0"
