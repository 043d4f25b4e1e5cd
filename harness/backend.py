"""Everything that depends on which Keras backend runs a cell, behind one small interface.

The rest of the harness speaks Keras 3 and imports this module only; the code for each
framework lives in one module per backend under :mod:`harness.backends` (TensorFlow, JAX,
PyTorch), and only the module of the backend a process runs on is imported, so a JAX
cell never imports TensorFlow. What is the same for every backend lives here: the
precision rules, the host's memory, the learning-rate-scaled Adam, ``jit_compile``'s
default.

What counts as a precision the device *cannot run* (decided here, enforced by the runner):

- ``float32``: every device.
- ``mixed_float16``: needs a GPU. On a CPU the float16 kernels are emulated or missing,
  so a figure from there would not measure mixed precision; it is an error, not a
  silent fallback. (A GPU below compute capability 7.0 runs it without tensor cores;
  that is allowed and noted.)
- ``mixed_bfloat16``: needs a GPU of compute capability >= 8.0, or a CPU with native
  bfloat16 instructions (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import os
import resource
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from harness import backends, cpuinfo
from harness.backends._base import CompileWatch, Device

__all__ = ["BACKENDS", "CompileWatch", "Device"]

BACKENDS: tuple[str, ...] = backends.names()
BF16_CPU_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")


def configured_backend() -> str:
    """The backend a cell runs on when nothing names one, read without importing Keras.

    ``$KERAS_BACKEND``, else ``~/.keras/keras.json`` (``$KERAS_HOME``) when that backend is
    installed (Keras writes the file itself, naming tensorflow, on its first import), else
    the first installed of TensorFlow, JAX and torch (so a machine with JAX and no
    TensorFlow, like the GPU machines, runs JAX), else tensorflow.
    """
    env = os.environ.get("KERAS_BACKEND")
    if env:
        return env
    home = os.environ.get("KERAS_HOME") or str(Path.home() / ".keras")
    try:
        cfg = json.loads((Path(home) / "keras.json").read_text())
        named = str(cfg.get("backend") or "")
        if named in BACKENDS and installed(named):
            return named
    except (OSError, ValueError):
        pass
    return next((b for b in BACKENDS if installed(b)), backends.DEFAULT)


def module(backend_name: str | None = None) -> ModuleType:
    """The :mod:`harness.backends` module of ``backend_name`` (default: the running one)."""
    return backends.load(backend_name or name())


def installed(backend_name: str) -> bool:
    """Whether the backend's framework can be imported here (without importing it)."""
    return importlib.util.find_spec(backends.load(backend_name).MODULE) is not None


def prepare_process(backend: str, *, deterministic: bool) -> None:
    """Environment a cell process needs *before* Keras (and its backend) is imported."""
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    backends.load(backend).prepare_process(deterministic)


def name() -> str:
    import keras

    return keras.backend.backend()


def resolve_jit_compile(value: bool | None, backend_name: str | None = None) -> bool:
    """A cell's ``jit_compile``: its own value, else its backend's default
    (TensorFlow: False, a ``tf.function`` graph; JAX: True, ``jax.jit``; torch: False)."""
    if value is not None:
        return bool(value)
    return bool(module(backend_name).JIT_DEFAULT)


def jit_meaning(value: bool, backend_name: str | None = None) -> str:
    """What ``jit_compile=value`` runs on the backend, in words (for the result)."""
    return str(module(backend_name).JIT_MEANING[bool(value)])


def set_random_seed(seed: int) -> None:
    """``keras.utils.set_random_seed(seed)`` without loading TensorFlow into a cell of another
    backend: Keras also seeds TensorFlow whenever it is installed, which imports all of it
    (seconds of start-up and hundreds of MB of the cell's peak RSS, in a JAX or torch cell
    that never uses it). For such a cell TensorFlow is hidden from that one call."""
    import keras

    if name() == "tensorflow" or sys.modules.get("tensorflow") is not None:
        keras.utils.set_random_seed(seed)
        return
    had = "tensorflow" in sys.modules
    sys.modules["tensorflow"] = None  # type: ignore[assignment]  # import fails: "not installed"
    try:
        keras.utils.set_random_seed(seed)
    finally:
        if not had:
            del sys.modules["tensorflow"]


def enable_jit(model: Any) -> list[str]:
    """Let ``jit_compile=True`` hold on this backend: mark the layers Keras calls
    un-compilable but this backend compiles (its module's ``JIT_SAFE_LAYERS``; on JAX the
    affine augmentation layers, without which Keras silently runs the whole step eagerly).
    Call before ``compile``; returns the names of the layers it marked."""
    safe = getattr(module(), "JIT_SAFE_LAYERS", ())
    marked = []
    for layer in model._flatten_layers():
        if not layer.supports_jit and type(layer).__name__ in safe:
            layer.supports_jit = True
            marked.append(layer.name)
    return marked


def enable_determinism(on: bool) -> str:
    """Turn op determinism on (or leave it off); returns what was done, for the result."""
    if not on:
        return "off"
    return str(module().enable_determinism())


def devices() -> list[Device]:
    """Accelerators visible to the backend (GPUs first), then the host CPU."""
    return [*module().gpus(), Device("CPU", cpu_model())]


def cpu_model() -> str:
    return cpuinfo.model()


def bf16_cpu_flags() -> list[str]:
    """The native-bfloat16 CPU flags this machine has (empty: none)."""
    flags = cpuinfo.flags()
    return [f for f in BF16_CPU_FLAGS if f in flags]


def precision_problem(precision: str, devs: list[Device] | None = None) -> str | None:
    """Why this device cannot run ``precision`` (None when it can). See the module doc."""
    if precision == "float32":
        return None
    devs = devices() if devs is None else devs
    gpus = [d for d in devs if d.kind == "GPU"]
    if precision == "mixed_float16":
        if gpus:
            return None
        return (
            "precision mixed_float16 needs a GPU and this machine has none (CPU float16 "
            "kernels are emulated, so the figure would not mean mixed precision); run "
            "float32 here, use --dry-run to check the graph, or run on a GPU"
        )
    if precision == "mixed_bfloat16":
        if gpus:
            cc = gpus[0].compute_capability
            if cc is not None and cc >= (8, 0):
                return None
            return (
                f"precision mixed_bfloat16 needs a GPU of compute capability >= 8.0; "
                f"{gpus[0].name} has {cc!r}"
            )
        if bf16_cpu_flags():
            return None
        return (
            f"precision mixed_bfloat16 is unsupported here: it needs a GPU (compute "
            f"capability >= 8.0) or a CPU with {'/'.join(BF16_CPU_FLAGS)}; this machine "
            f"has neither ({cpu_model()})"
        )
    return f"unknown precision {precision!r}"


def reset_peak_memory() -> None:
    """Start a fresh device peak-memory window where the backend allows it."""
    with contextlib.suppress(RuntimeError, ValueError):
        module().reset_peak_memory()


def peak_memory() -> tuple[int, str]:
    """(bytes, what it means): the device's peak from its stats, else the host's max RSS."""
    try:
        device = module().peak_memory()
    except (RuntimeError, ValueError, KeyError):
        device = None
    if device is not None:
        return device
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss_kib) * 1024, "host max rss of the cell process (no device memory stats)"


def sync(model: Any) -> None:
    """Return once the device has finished the work queued for ``model`` (timing needs it)."""
    module().sync(model)


def compile_watch() -> CompileWatch:
    """Records the backend's compilations while open, where the backend can observe them."""
    return module().compile_watch()


def eval_batch_size(n: int, batch: int) -> int:
    """Batch size for validation, evaluate and predict over ``n`` examples (see backends)."""
    return int(module().eval_batch_size(n, batch))


def runtime_info() -> dict[str, Any]:
    """What the running framework reports about itself and its device (for the result)."""
    try:
        return dict(module().runtime_info())
    except Exception as exc:  # information only: never fail a cell for it
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}


def framework_versions() -> dict[str, str | None]:
    """Installed versions of keras and each backend, without importing them."""
    out: dict[str, str | None] = {}
    for key in ("keras", *BACKENDS):
        dists = ("keras",) if key == "keras" else backends.load(key).DISTRIBUTIONS
        out[key] = None
        for dist in dists:
            try:
                out[key] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


@functools.cache
def build_info(backend_name: str | None = None) -> dict[str, str | None]:
    """CUDA / cuDNN versions a backend was built against, without importing it.

    ``backend_name``: that backend's; None: the first installed of :data:`BACKENDS`
    (TensorFlow, then JAX, then torch), so a machine without TensorFlow reports its JAX's.
    """
    if backend_name is not None:
        return dict(backends.load(backend_name).build_info())
    for b in BACKENDS:
        if installed(b):
            return dict(backends.load(b).build_info())
    return {"cuda": None, "cudnn": None}


def prebuild_for_fit(model: Any, x: Any, y: Any) -> None:
    """Create the optimizer's and metrics' variables now, before ``fit`` traces its step.

    Keras on TensorFlow (without a distribution strategy) defers that to the first trace of
    the train function; TensorFlow then sees variables created inside a ``tf.function`` and
    traces the whole training step a second time. Building them up front (Keras's own
    ``_symbolic_build``, as it does under a strategy and on JAX/PyTorch) halves the graph
    tracing of a cell. Same variables, same initial values: the numbers do not change.
    """
    build = getattr(model, "_symbolic_build", None)
    if build is not None:
        build(data_batch=(x, y))


# --- the optimizer -------------------------------------------------------------------------


def adam(learning_rate: float, *, lr_multipliers: dict[str, float] | None = None) -> Any:
    """Adam as in ``keras.optimizers.Adam``, with optional per-variable learning-rate factors.

    ``lr_multipliers`` maps a variable's ``path`` to a factor: that variable is updated with
    ``learning_rate × factor`` (Keras 3 has no per-layer learning rates; this is how
    two-stage gives the backbone a lower one, exactly, including under Adam, whose update
    is invariant to gradient scaling). Each backend may swap in a faster implementation of
    the same update (``fused_adam`` in its module): TensorFlow's ``ResourceApplyAdam``,
    Keras's ``torch._foreach`` Adam; under ``jax.jit`` XLA fuses the plain one.
    """
    cls = _adam_class(name())
    return cls(learning_rate=learning_rate, lr_multipliers=lr_multipliers or {})


@functools.cache
def _adam_class(backend_name: str) -> type:
    import keras

    class HarnessAdam(keras.optimizers.Adam):
        def __init__(self, *args: Any, lr_multipliers: dict[str, float], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.lr_multipliers = dict(lr_multipliers)

        def _factor(self, variable: Any) -> float:
            return self.lr_multipliers.get(getattr(variable, "path", ""), 1.0)

        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
            factor = self._factor(variable)
            if factor != 1.0:
                learning_rate = learning_rate * factor
            super().update_step(gradient, variable, learning_rate)

        def get_config(self) -> dict[str, Any]:
            config = super().get_config()
            config["lr_multipliers"] = dict(self.lr_multipliers)
            return config

    return backends.load(backend_name).fused_adam(HarnessAdam) or HarnessAdam


def optimizer_implementation(optimizer: Any) -> str:
    return getattr(optimizer, "implementation", f"keras.optimizers.Adam ({name()})")
