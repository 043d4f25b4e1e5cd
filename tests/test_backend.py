"""The backend layer without training: the registry, the facade, the backend axis of a matrix,
``--backend`` against that axis, bf16 detection, the step timer's device wait.

Fast (no model is trained); tests/test_backend_contract.py trains tiny models on every
installed backend, tests/test_backend_jax.py runs the JAX smoke matrix and the GPU check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import backend, backends
from harness.backends._base import divisor_batch
from harness.errors import InputError
from harness.matrix import CellSpec, parse_matrix
from harness.run import orchestrate

REPO = Path(__file__).resolve().parent.parent
INTERFACE = (
    "MODULE", "DISTRIBUTIONS", "JIT_DEFAULT", "JIT_MEANING", "prepare_process",
    "enable_determinism", "gpus", "reset_peak_memory", "peak_memory", "sync", "fused_adam",
    "build_info", "runtime_info", "compile_watch", "eval_batch_size",
)  # fmt: skip


def test_every_backend_module_has_the_whole_interface() -> None:
    assert backends.names() == ("tensorflow", "jax", "torch") == backend.BACKENDS
    for name in backends.names():
        mod = backends.load(name)
        missing = [a for a in INTERFACE if not hasattr(mod, a)]
        assert not missing, f"harness/backends/{name}.py lacks {missing}"
        assert set(mod.JIT_MEANING) == {True, False}
    with pytest.raises(ValueError, match="unknown backend 'theano'"):
        backends.load("theano")


def test_listing_backends_and_versions_imports_no_framework() -> None:
    code = (
        "import sys, json\n"
        "from harness import backend, env\n"
        "backend.framework_versions(); backend.build_info(); backend.build_info('jax')\n"
        "[backend.installed(b) for b in backend.BACKENDS]\n"
        "from harness.matrix import load_matrix; load_matrix('smoke')\n"
        "print(json.dumps(sorted(m for m in ('tensorflow', 'jax', 'torch', 'keras') "
        "if m in sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_jit_compile_default_is_the_backends() -> None:
    assert backend.resolve_jit_compile(None, "tensorflow") is False
    assert backend.resolve_jit_compile(None, "jax") is True
    assert backend.resolve_jit_compile(None, "torch") is False
    assert backend.resolve_jit_compile(False, "jax") is False
    assert "eager" in backend.jit_meaning(False, "jax")


def test_eval_batch_divides_the_split_where_the_backend_compiles_per_shape() -> None:
    assert divisor_batch(200, 32) == 40 and divisor_batch(240, 32) == 40
    assert divisor_batch(8, 32) == 8  # smaller than a batch: one batch
    assert divisor_batch(211, 32) == 211  # up to 8 batches: all in one
    assert divisor_batch(2111, 32) == 32  # prime: no divisor in range, the remainder stays
    assert backends.load("jax").eval_batch_size(200, 32) == 40
    assert backends.load("tensorflow").eval_batch_size(200, 32) == 32


def test_bf16_is_supported_only_with_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = [backend.Device("CPU", "Some CPU")]
    monkeypatch.setattr(backend.cpuinfo, "flags", lambda: frozenset({"avx2", "avx512f"}))
    why = backend.precision_problem("mixed_bfloat16", cpu)
    assert why and "unsupported" in why and "avx512_bf16/amx_bf16" in why
    monkeypatch.setattr(backend.cpuinfo, "flags", lambda: frozenset({"avx512_bf16"}))
    assert backend.precision_problem("mixed_bfloat16", cpu) is None
    monkeypatch.setattr(backend.cpuinfo, "flags", lambda: frozenset({"amx_bf16", "amx_tile"}))
    assert backend.precision_problem("mixed_bfloat16", cpu) is None
    assert backend.bf16_cpu_flags() == ["amx_bf16"]
    gpu = [backend.Device("GPU", "Old GPU", (7, 5)), *cpu]
    assert "compute capability >= 8.0" in (backend.precision_problem("mixed_bfloat16", gpu) or "")


def test_this_machine_says_plainly_whether_it_has_bf16() -> None:
    """Here (an AMD EPYC without AVX512-BF16/AMX) bf16 is a clear "unsupported" error."""
    cpu = [backend.Device("CPU", backend.cpu_model())]
    why = backend.precision_problem("mixed_bfloat16", cpu)
    if backend.bf16_cpu_flags():
        assert why is None
    else:
        assert why is not None and "unsupported here" in why and backend.cpu_model() in why


TOML = """
[tolerances]
accuracy_points = 5.0
throughput_relative = 0.5
[defaults]
image_size = 32
alpha = 0.35
input = "synthetic"
num_classes = 3
[[cells]]
datasets = ["tiny"]
strategies = ["scratch"]
precisions = ["float32"]
seeds = [0]
"""


def parse(extra: str) -> list[CellSpec]:
    import tomllib

    data = tomllib.loads(TOML + extra)
    return list(parse_matrix(data, path=Path("m.toml"), profile="m").cells)


def test_backend_axis_ids_show_only_other_backends() -> None:
    cells = parse('backends = ["tensorflow", "jax", "torch"]\n')
    assert [c.cell_id for c in cells] == [
        "tiny/scratch/float32/s0",
        "tiny/scratch/float32/s0/jax",
        "tiny/scratch/float32/s0/torch",
    ]
    assert [c.backend for c in cells] == ["tensorflow", "jax", "torch"]
    plain = parse("")
    assert [c.cell_id for c in plain] == ["tiny/scratch/float32/s0"] and plain[0].backend is None
    assert parse("jit_compile = false\n")[0].jit_compile is False and plain[0].jit_compile is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('backends = ["theano"]\n', "backend: expected one of ['tensorflow', 'jax', 'torch']"),
        ('backend = "jax"\n', "'backend' is a matrix axis"),
        ("backends = []\n", "backends: expected a non-empty list"),
        ('jit_compile = "yes"\n', "jit_compile: expected bool | None"),
    ],
)
def test_bad_backend_axis_is_one_clear_error(extra: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(extra)


def test_backend_option_against_the_axis() -> None:
    """--backend B: cells naming no backend run on B; of an axis, only B's cells run."""
    mixed = tuple(parse('backends = ["tensorflow", "jax"]\n'))
    plain = tuple(parse(""))
    assert orchestrate.select_backend(mixed, None) == mixed
    assert [c.cell_id for c in orchestrate.select_backend(mixed, "jax")] == [
        "tiny/scratch/float32/s0/jax"
    ]
    assert orchestrate.select_backend(plain, "jax") == plain
    with pytest.raises(InputError, match="--backend 'torch': none of the 2 selected cells"):
        orchestrate.select_backend(mixed, "torch")


def test_step_timer_reads_the_clock_after_the_device_finished(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fake clock that only the device wait advances: the step time is the wait."""
    from harness.cell import timing

    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def device_wait(model: object) -> None:
        clock[0] += 5.0  # the queued work of the step finishes during the wait

    timer = timing.StepTimer(1, partial_step=3, sync=device_wait)
    timer.on_train_begin()
    for step in range(4):  # steps 0..2 full batches, 3 the smaller remainder batch
        timer.on_train_batch_begin(step)
        timer.on_train_batch_end(step)
    assert timer.warmup == [[5.0]] and timer.segments == [[5.0, 5.0]]
    assert timer.partial == [[5.0]]  # kept apart: images/s counts full batches only
