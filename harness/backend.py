"""Everything that depends on which Keras backend runs a cell, behind one small interface.

This is the only module that touches TensorFlow (or JAX / PyTorch) directly: op
determinism, device listing and capabilities, device memory statistics, build info and
the fused Adam update. The rest of the harness speaks Keras 3 only, so that
``KERAS_BACKEND=jax`` or ``torch`` still runs a cell; each function here has a
TensorFlow path and, where the others differ, their path or an honest "unknown".

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

import functools
import importlib.metadata
import importlib.util
import json
import os
import resource
import runpy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKENDS: tuple[str, ...] = ("tensorflow", "jax", "torch")


def configured_backend() -> str:
    """The backend Keras will use, read without importing Keras.

    ``$KERAS_BACKEND``, else ``~/.keras/keras.json`` (``$KERAS_HOME``), else tensorflow.
    """
    env = os.environ.get("KERAS_BACKEND")
    if env:
        return env
    home = os.environ.get("KERAS_HOME") or str(Path.home() / ".keras")
    try:
        cfg = json.loads((Path(home) / "keras.json").read_text())
        return str(cfg.get("backend") or "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def prepare_process(backend: str, *, deterministic: bool) -> None:
    """Environment a cell process needs *before* Keras (and its backend) is imported."""
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if backend == "jax":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        if deterministic:
            flags = os.environ.get("XLA_FLAGS", "")
            if "xla_gpu_deterministic_ops" not in flags:
                os.environ["XLA_FLAGS"] = (flags + " --xla_gpu_deterministic_ops=true").strip()
    elif backend == "torch" and deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif backend == "tensorflow":
        os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")


def name() -> str:
    import keras

    return keras.backend.backend()


def enable_determinism(on: bool) -> str:
    """Turn op determinism on (or leave it off); returns what was done, for the result."""
    backend = name()
    if not on:
        return "off"
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
        return "tf.config.experimental.enable_op_determinism"
    if backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        return "torch.use_deterministic_algorithms"
    if backend == "jax":
        return "XLA_FLAGS=--xla_gpu_deterministic_ops=true (CPU XLA is deterministic)"
    return f"unknown backend {backend!r}: no determinism switch"


@dataclass(frozen=True)
class Device:
    """One compute device as the backend sees it."""

    kind: str  # "GPU" or "CPU"
    name: str
    compute_capability: tuple[int, int] | None = None


def devices() -> list[Device]:
    """Accelerators visible to the backend (GPUs first), then the host CPU."""
    backend = name()
    found: list[Device] = []
    if backend == "tensorflow":
        import tensorflow as tf

        for d in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(d)
            cc = details.get("compute_capability")
            dev_name = details.get("device_name", d.name)
            found.append(Device("GPU", dev_name, tuple(cc) if cc else None))
    elif backend == "jax":
        import jax

        for d in jax.devices():
            if d.platform == "gpu":
                cc = getattr(d, "compute_capability", None)
                cc_t = tuple(int(x) for x in str(cc).split(".")[:2]) if cc else None
                found.append(Device("GPU", d.device_kind, cc_t))
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                cc = torch.cuda.get_device_capability(i)
                found.append(Device("GPU", torch.cuda.get_device_name(i), cc))
    found.append(Device("CPU", cpu_model()))
    return found


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


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
        flags = _cpu_flags()
        if {"avx512_bf16", "amx_bf16"} & flags:
            return None
        return (
            f"precision mixed_bfloat16 needs a GPU (compute capability >= 8.0) or a CPU with "
            f"avx512_bf16/amx_bf16; this machine has neither ({cpu_model()})"
        )
    return f"unknown precision {precision!r}"


def reset_peak_memory() -> None:
    """Start a fresh device peak-memory window where the backend allows it."""
    backend = name()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_logical_devices("GPU"):
                tf.config.experimental.reset_memory_stats("GPU:0")
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
    except (RuntimeError, ValueError):
        pass


def peak_memory() -> tuple[int, str]:
    """(bytes, what it means): the device peak on a GPU, else the host's max RSS."""
    backend = name()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_logical_devices("GPU"):
                info = tf.config.experimental.get_memory_info("GPU:0")
                return int(info["peak"]), "gpu:0 peak allocated (tensorflow)"
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                return int(torch.cuda.max_memory_allocated()), "gpu:0 peak allocated (torch)"
        elif backend == "jax":
            import jax

            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            if gpus:
                stats = gpus[0].memory_stats() or {}
                if "peak_bytes_in_use" in stats:
                    return int(stats["peak_bytes_in_use"]), "gpu:0 peak bytes in use (jax)"
    except (RuntimeError, ValueError, KeyError):
        pass
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss_kib) * 1024, "host max rss of the cell process (no GPU)"


def framework_versions() -> dict[str, str | None]:
    """Installed versions of keras and each backend, without importing them."""
    out: dict[str, str | None] = {}
    for key, dists in (
        ("keras", ("keras",)),
        ("tensorflow", ("tensorflow", "tensorflow-cpu", "tf-nightly")),
        ("jax", ("jax",)),
        ("torch", ("torch",)),
    ):
        out[key] = None
        for dist in dists:
            try:
                out[key] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


@functools.cache
def build_info() -> dict[str, str | None]:
    """CUDA / cuDNN versions the installed TensorFlow (else torch) was built against.

    Read from ``tensorflow/python/platform/build_info.py`` directly, so the orchestrating
    process never pays for (or initialises a GPU through) a TensorFlow import.
    """
    info: dict[str, str | None] = {"cuda": None, "cudnn": None}
    spec = importlib.util.find_spec("tensorflow")
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            path = Path(loc) / "python" / "platform" / "build_info.py"
            if path.is_file():
                try:
                    data = runpy.run_path(str(path)).get("build_info", {})
                except Exception:  # a malformed file must not break a fingerprint
                    data = {}
                info["cuda"] = data.get("cuda_version") or None
                info["cudnn"] = data.get("cudnn_version") or None
                return info
    if importlib.util.find_spec("torch"):
        try:
            import torch

            info["cuda"] = torch.version.cuda
            v = torch.backends.cudnn.version()
            info["cudnn"] = str(v) if v else None
        except Exception:
            pass
    return info


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
    is invariant to gradient scaling). On TensorFlow the update of each variable is one
    fused ``ResourceApplyAdam`` op — the same formula as Keras's Adam
    (``lr·sqrt(1-β2^t)/(1-β1^t) · m / (sqrt(v) + ε)``) in ~1 op instead of ~20, which cuts
    the graph-tracing time of a full MobileNetV2 training step by more than half on a CPU.
    """
    cls = _adam_class()
    return cls(learning_rate=learning_rate, lr_multipliers=lr_multipliers or {})


@functools.cache
def _adam_class() -> type:
    import keras

    backend = keras.backend.backend()

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

    if backend != "tensorflow":
        return HarnessAdam

    import tensorflow as tf

    class FusedHarnessAdam(HarnessAdam):
        implementation = "tensorflow ResourceApplyAdam (fused)"

        def _backend_update_step(self, grads: Any, trainable_variables: Any, lr: Any) -> None:
            if self.amsgrad:  # pragma: no cover - not used by the harness
                return super()._backend_update_step(grads, trainable_variables, lr)
            step = tf.cast(self.iterations + 1, tf.float32)
            beta_1 = tf.constant(self.beta_1, tf.float32)
            beta_2 = tf.constant(self.beta_2, tf.float32)
            scalars = {
                "beta1_power": tf.pow(beta_1, step),
                "beta2_power": tf.pow(beta_2, step),
                "beta1": beta_1,
                "beta2": beta_2,
                "epsilon": tf.constant(self.epsilon, tf.float32),
            }
            lr = tf.cast(lr, tf.float32)
            cache: dict[tuple[Any, float], dict[str, Any]] = {}
            for grad, variable in zip(grads, trainable_variables, strict=True):
                var = variable.value if isinstance(variable, keras.Variable) else variable
                index = self._get_variable_index(variable)
                factor = self._factor(variable)
                key = (var.dtype, factor)
                if key not in cache:  # one set of scalar ops per (dtype, factor), not per var
                    var_lr = lr * factor if factor != 1.0 else lr
                    cache[key] = {
                        k: tf.cast(t, var.dtype) for k, t in {**scalars, "lr": var_lr}.items()
                    }
                tf.raw_ops.ResourceApplyAdam(
                    var=var.handle,
                    m=self._momentums[index].value.handle,
                    v=self._velocities[index].value.handle,
                    grad=tf.cast(grad, var.dtype),
                    use_locking=False,
                    **cache[key],
                )
            return None

    return FusedHarnessAdam


def optimizer_implementation(optimizer: Any) -> str:
    return getattr(optimizer, "implementation", f"keras.optimizers.Adam ({name()})")
