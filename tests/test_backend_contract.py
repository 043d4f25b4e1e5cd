"""The backend contract, on every installed backend: TensorFlow, JAX, and torch where it is.

Per backend, in a process of its own (tests/backend_probe.py, tiny models): the precision
policy keeps a float32 output layer, frozen BatchNorm stays in inference mode, two-stage's
per-variable learning-rate scaling is exact through the compiled training step, a step's
end time is taken after the device finished it, peak memory says what it is. Through the
CLI (cell processes, a ``backends`` axis): the same seed gives a bit-identical history and
weights digest, another seed does not.

A backend that is not installed here is skipped, saying so: torch is not in the lock (its
Linux wheel pulls gigabytes of CUDA libraries); run these tests from an environment that
has it (see the README) to check it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import tinymatrix

from harness import backend, runfolder

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("tensorflow", "jax", "torch")


def _skip_reason(name: str) -> str | None:
    if backend.installed(name):
        return None
    return (
        f"the {name} backend is not installed in {sys.prefix}"
        + (" (torch is not in the lock: its Linux wheel pulls multi-GB CUDA libraries)"
           if name == "torch" else "")
    )  # fmt: skip


def per_backend() -> list[Any]:
    return [
        pytest.param(b, marks=pytest.mark.skip(reason=why)) if (why := _skip_reason(b)) else b
        for b in BACKENDS
    ]


@cache
def probe(name: str) -> dict[str, Any]:
    env = {**os.environ, "KERAS_BACKEND": name, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "backend_probe.py")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@probe ")]
    assert proc.returncode == 0 and lines, f"probe on {name} failed:\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("@@probe ") :])


@pytest.mark.parametrize("name", per_backend())
def test_probe_runs_on_its_own_backend_only(name: str) -> None:
    found = probe(name)
    assert found["backend"] == name
    # Keras itself imports JAX wherever it is installed, whatever the backend; nothing
    # else may come in: a JAX or torch process never imports TensorFlow.
    others = set(found["frameworks_imported"]) - {name, "jax"}
    assert not others, f"a {name} process imported {sorted(others)}"


@pytest.mark.parametrize("name", per_backend())
def test_mixed_precision_keeps_a_float32_output_layer(name: str) -> None:
    for precision, low in (("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")):
        got = probe(name)["precision"][precision]
        assert got["backbone_compute_dtype"] == low, (precision, got)
        assert got["backbone_variable_dtype"] == "float32"
        assert got["output_layer_policy"] == "float32" and got["output_dtype"] == "float32"


@pytest.mark.parametrize("name", per_backend())
def test_frozen_batchnorm_stays_in_inference_mode(name: str) -> None:
    bn = probe(name)["frozen_bn"]
    assert bn["frozen"] > 30 and bn["trainable"] >= 1  # fine-tune, K = 140 of 154
    assert bn["frozen_that_moved"] == []
    assert len(bn["trainable_that_moved"]) == bn["trainable"]  # the check can see a move


@pytest.mark.parametrize("name", per_backend())
def test_two_stage_learning_rate_scaling_is_exact(name: str) -> None:
    """Per variable, its largest first-step move over lr: the backbone's never above the
    factor (0.1) and reaching it, the head's never above 1 and reaching it."""
    got = probe(name)["lr_scaling"]
    backbone, head, factor = got["backbone_step_over_lr"], got["head_step_over_lr"], got["factor"]
    assert len(backbone) > 20 and head
    assert max(backbone) == pytest.approx(factor, rel=2e-3)
    assert all(r <= factor * (1 + 1e-3) for r in backbone)
    assert max(head) == pytest.approx(1.0, rel=2e-3) and all(r <= 1 + 1e-3 for r in head)


@pytest.mark.parametrize("name", per_backend())
def test_step_end_is_taken_after_the_device_finished(name: str) -> None:
    got = probe(name)["timing"]
    assert got["steps"] == got["timed_steps"] == 3
    assert got["steps_with_pending_work"] == 0


@pytest.mark.parametrize("name", per_backend())
def test_peak_memory_says_what_it_is(name: str) -> None:
    mem = probe(name)["memory"]
    assert mem["bytes"] > 0
    gpus = [d for d in backend.devices() if d.kind == "GPU"] if name == "tensorflow" else []
    if not gpus:
        assert "host max rss" in mem["kind"] and "no device memory stats" in mem["kind"]


TWO_STAGE = {"epochs": 3, "head_epochs": 1, "dense_units": 16, **tinymatrix.SYNTHETIC}


@pytest.mark.slow
def test_same_seed_is_bit_identical_on_every_backend(
    tmp_path: Path, run_bench: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    installed = [b for b in BACKENDS if _skip_reason(b) is None]
    profile = tinymatrix.write(
        tmp_path,
        tinymatrix.group("tiny", "two-stage", seeds=[0, 1], backends=installed),
        **TWO_STAGE,
    )
    runs = {}
    for run_id in ("a", "b"):
        proc = run_bench(
            "all", "--profile", str(profile), "--runs-dir", str(tmp_path), "--run-id", run_id,
            "--no-compare",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[run_id] = {c.cell_id: c for c in runfolder.read_cells(tmp_path / run_id)}
    for name in installed:
        suffix = "" if name == "tensorflow" else f"/{name}"
        a0 = runs["a"][f"tiny/two-stage-random/float32/s0{suffix}"]
        b0 = runs["b"][f"tiny/two-stage-random/float32/s0{suffix}"]
        a1 = runs["a"][f"tiny/two-stage-random/float32/s1{suffix}"]
        assert a0.backend == name and a0.ok and b0.ok and a1.ok
        curve = lambda r: [(h.loss, h.accuracy, h.val_loss, h.val_accuracy) for h in r.history]  # noqa: E731
        assert len(a0.history) == 3
        assert curve(a0) == curve(b0), f"{name}: same seed, different history"
        assert a0.weights_digest == b0.weights_digest, f"{name}: same seed, different weights"
        assert a0.weights_digest != a1.weights_digest and curve(a0) != curve(a1)
        assert a0.config["determinism"] != "off"
        assert a0.peak_memory_kind  # which memory it is, always stated
