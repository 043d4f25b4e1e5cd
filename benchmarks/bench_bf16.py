"""bf16 against float32 training throughput per strategy, on a CPU with native bfloat16.

Run: ``.venv/bin/pytest benchmarks/bench_bf16.py --benchmark-only -s`` (or
``.venv/bin/python benchmarks/bench_bf16.py``). Figures go to stdout and to the
benchmark's ``extra_info``.

Where the CPU has AVX512-BF16 or AMX (``avx512_bf16`` / ``amx_bf16`` in /proc/cpuinfo, see
:func:`harness.backend.bf16_cpu_flags`), it runs a throughput matrix through the CLI
(``bench all``), once per installed backend of TensorFlow and JAX: every strategy at
float32 and mixed_bfloat16, synthetic uint8 input, 128 px, MobileNetV2 alpha 0.5, batch
32, fixed step counts (the first steps of each stage excluded), and records train and
inference images/s per strategy and the bf16 / float32 ratio. Elsewhere it is skipped with
the harness's own reason: there ``mixed_bfloat16`` is an "unsupported" error, never a
silent emulation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness import backend, runfolder  # noqa: E402

PROFILE = """
[profile]
description = "bf16 vs float32 on a CPU: images/s per strategy, 128 px, alpha 0.5, batch 32"
[tolerances]
accuracy_points = 100.0
throughput_relative = 0.10
[defaults]
input = "synthetic"
num_classes = 100
image_size = 128
alpha = 0.5
weights = "none"
batch_size = 32
epochs = 3
head_epochs = 1
steps_per_epoch = 8
warmup_steps = 3
augmentation = "flip"
inference_batch = 32
inference_steps = 10
inference_warmup = 2
deterministic = false
[[cells]]
datasets = ["synthetic-128"]
strategies = ["scratch", "feature-extract", "fine-tune", "full-fine-tune", "two-stage",
              "linear-probe"]
precisions = ["float32", "mixed_bfloat16"]
seeds = [0]
"""


def unsupported() -> str | None:
    """Why this CPU cannot run mixed_bfloat16 (None: it can)."""
    return backend.precision_problem("mixed_bfloat16", [backend.Device("CPU", backend.cpu_model())])


def measure(name: str, workdir: Path) -> dict[str, Any]:
    """The matrix on backend ``name``: per strategy, images/s per precision and bf16 / fp32."""
    profile = workdir / "bf16.toml"
    profile.write_text(PROFILE)
    env = {**os.environ, "BENCH_HOME": str(REPO), "BENCH_TENSORBOARD": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "all", "--profile", str(profile), "--backend",
         name, "--runs-dir", str(workdir), "--run-id", name, "--no-compare"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=7200,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(
            f"bench all on {name} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    cells = {(c.strategy, c.precision): c for c in runfolder.read_cells(workdir / name)}
    out: dict[str, Any] = {}
    for (strategy, precision), c in sorted(cells.items()):
        if precision != "mixed_bfloat16":
            continue
        ref = cells[(strategy, "float32")]
        rates = {
            p: {
                "train": x.train_throughput.images_per_s if x.train_throughput else None,
                "inference": x.inference_throughput.images_per_s
                if x.inference_throughput
                else None,
            }
            for p, x in (("float32", ref), ("mixed_bfloat16", c))
        }
        out[strategy] = {
            **rates,
            "bf16_over_fp32_train": (rates["mixed_bfloat16"]["train"] or 0)
            / (rates["float32"]["train"] or float("nan")),
            "bf16_over_fp32_inference": (rates["mixed_bfloat16"]["inference"] or 0)
            / (rates["float32"]["inference"] or float("nan")),
        }
    return out


@pytest.mark.parametrize("name", ["tensorflow", "jax"])
def test_bf16_vs_float32_train_throughput(benchmark: Any, name: str) -> None:
    why = unsupported()
    if why:
        pytest.skip(why)
    if not backend.installed(name):
        pytest.skip(f"the {name} backend is not installed here")
    found: dict[str, Any] = {}

    def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            found.update(measure(name, Path(tmp)))

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(
        {"backend": name, "cpu": backend.cpu_model(), "bf16_flags": backend.bf16_cpu_flags()}
    )
    benchmark.extra_info["strategies"] = found
    print(f"\nbf16 vs float32 on {name}, {backend.cpu_model()}:")
    print(json.dumps(found, indent=1))


if __name__ == "__main__":
    why = unsupported()
    if why:
        print(f"skipped: {why}")
        sys.exit(0)
    for b in ("tensorflow", "jax"):
        if backend.installed(b):
            with tempfile.TemporaryDirectory() as tmp:
                print(b, json.dumps(measure(b, Path(tmp)), indent=1))
