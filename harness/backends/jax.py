"""The JAX backend: XLA flags, the persistent compilation cache, compile events, device stats.

``jit_compile``: True (the default here) compiles the whole training step with
``jax.jit`` (XLA); False runs Keras eagerly, op by op, each op compiled on its own: JAX has
no graph mode without XLA, and eager is ~10× slower on a CPU, so it is only ever the
"XLA off" leg of a comparison.

JAX compiles per input shape, and every cell is a fresh process, so without help a cell
pays for every compilation again (the initialisers, the training step, the evaluation
step). Two things keep that down:

- the **persistent compilation cache** (``jax_compilation_cache_dir``): executables are
  stored on disk and reused by later cells and runs with the same shapes, jaxlib, flags and
  CPU (the folder is keyed by the CPU model and flags). ``BENCH_JAX_CACHE=0`` turns it
  off; ``BENCH_JAX_CACHE_DIR`` moves it. A cell's result says how many compilations hit it;
- evaluation batches that divide the split (:func:`eval_batch_size`), so validation does
  not compile a second step for the remainder batch.

The training step still compiles twice when the training split is not a multiple of the
batch (the last, smaller batch is another shape); padding it would change what is computed
(BatchNorm batch statistics, the loss average), so that cost is JAX's own.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from harness import cpuinfo
from harness.backends._base import CompileWatch, Device, divisor_batch

MODULE = "jax"
DISTRIBUTIONS = ("jax",)
JIT_DEFAULT = True
JIT_MEANING = {
    True: "jax.jit of the whole step (XLA)",
    False: "eager: op by op, each op compiled on its own (no whole-step XLA)",
}
# Keras marks these un-compilable for TensorFlow's sake (its image-projective op has no XLA
# kernel) and then runs the whole model without jit on every backend; here they are JAX
# ops (``keras.ops.image.affine_transform``) and compile like any other.
JIT_SAFE_LAYERS = ("RandomRotation", "RandomZoom", "RandomTranslation", "RandomShear")
CACHE_SWITCH = "BENCH_JAX_CACHE"
CACHE_DIR_ENV = "BENCH_JAX_CACHE_DIR"
_GPU_PLATFORMS = ("gpu", "cuda", "rocm")
_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}


def cache_dir() -> Path | None:
    """Where compiled executables are kept (None when ``BENCH_JAX_CACHE=0``)."""
    if os.environ.get(CACHE_SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    host = f"{cpuinfo.model()}|{' '.join(sorted(cpuinfo.flags()))}"
    key = hashlib.sha256(host.encode()).hexdigest()[:12]
    return base / "transfer-bench" / "jax" / key


def prepare_process(deterministic: bool) -> None:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if deterministic:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " --xla_gpu_deterministic_ops=true").strip()
    folder = cache_dir()
    if folder is not None and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(folder)
        # Also the small compilations (initialisers: one per weight shape, ~0.1 s each).
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def enable_determinism() -> str:
    return "XLA_FLAGS=--xla_gpu_deterministic_ops=true (XLA on a CPU is deterministic)"


def _gpu_devices() -> list[Any]:
    import jax

    try:
        return [d for d in jax.devices() if d.platform in _GPU_PLATFORMS]
    except RuntimeError:
        return []


def gpus() -> list[Device]:
    found = []
    for d in _gpu_devices():
        cc = getattr(d, "compute_capability", None)
        cc_t = tuple(int(x) for x in str(cc).split(".")[:2]) if cc else None
        found.append(Device("GPU", d.device_kind, cc_t))  # type: ignore[arg-type]
    return found


def reset_peak_memory() -> None:
    """JAX has no reset: its device peak counts from the process start (a cell's process)."""


def peak_memory() -> tuple[int, str] | None:
    devs = _gpu_devices()
    stats = (devs[0].memory_stats() or {}) if devs else {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "gpu:0 peak bytes in use (jax, whole process)"
    return None


def sync(model: Any) -> None:
    """Block until the model's current state (weights, optimizer, metrics) is computed.

    Inside ``fit`` the live state is ``model._jax_state`` (Keras reattaches it to the
    variables only at epoch ends); outside, the variables hold it. A jitted step is one
    XLA executable, whose outputs all become ready when it finishes, so one of them is
    enough (waiting on each of hundreds costs milliseconds a step); eagerly, every op is
    its own computation, so all of them are waited for.
    """
    import jax
    import keras

    state = getattr(model, "_jax_state", None)
    if state and getattr(model, "jit_compile", False):
        for group in ("trainable_variables", "optimizer_variables", "metrics_variables"):
            arrays = state.get(group) or []
            if arrays and isinstance(arrays[0], jax.Array):
                arrays[0].block_until_ready()
                return
    leaves = keras.tree.flatten(state) if state else [v.value for v in model.variables]
    jax.block_until_ready([a for a in leaves if isinstance(a, jax.Array)])


def _version(*dists: str) -> tuple[str, str] | None:
    for dist in dists:
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def build_info() -> dict[str, str | None]:
    """CUDA from the installed ``jax-cuda*`` plugin, cuDNN from its wheel (no JAX import)."""
    info: dict[str, str | None] = {"cuda": None, "cudnn": None}
    for major in ("13", "12"):
        plugin = _version(f"jax-cuda{major}-plugin", f"jax-cuda{major}-pjrt")
        if plugin:
            runtime = _version(f"nvidia-cuda-runtime-cu{major}", "nvidia-cuda-runtime")
            info["cuda"] = runtime[1] if runtime else f"{major} ({plugin[0]} {plugin[1]})"
            cudnn = _version(f"nvidia-cudnn-cu{major}", "nvidia-cudnn")
            info["cudnn"] = cudnn[1] if cudnn else None
            break
    return info


def runtime_info() -> dict[str, Any]:
    import jax

    dev = jax.devices()[0]
    client = getattr(dev, "client", None)
    return {
        "jax": jax.__version__,
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "platform_version": getattr(client, "platform_version", None),
        "default_matmul_precision": jax.config.jax_default_matmul_precision,
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


class JaxCompileWatch(CompileWatch):
    """JAX's monitoring events while open: trace, lower and XLA-compile seconds per function,
    and the persistent cache's hits and misses."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.by_function: dict[str, list[float]] = defaultdict(list)
        self.events: dict[str, int] = defaultdict(int)

    def _duration(self, event: str, seconds: float, **kwargs: Any) -> None:
        phase = _EVENTS.get(event)
        if phase is None:
            return
        self.seconds[phase] += seconds
        if phase == "compile":
            self.by_function[str(kwargs.get("fun_name", "?"))].append(seconds)

    def _event(self, event: str, **kwargs: Any) -> None:
        if event.startswith("/jax/compilation_cache/"):
            self.events[event.rsplit("/", 1)[-1]] += 1

    def __enter__(self) -> JaxCompileWatch:
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._duration)
        jax.monitoring.register_event_listener(self._event)
        return self

    def __exit__(self, *exc: Any) -> None:
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self._duration)
        jax.monitoring.unregister_event_listener(self._event)

    def summary(self) -> dict[str, Any]:
        top = sorted(self.by_function.items(), key=lambda kv: -sum(kv[1]))[:6]
        return {
            "observed_by": "jax.monitoring events",
            "xla_compile_requests": sum(len(v) for v in self.by_function.values()),
            "seconds": {k: round(v, 3) for k, v in sorted(self.seconds.items())},
            "total_seconds": round(sum(self.seconds.values()), 3),
            "largest": [
                {"function": name, "count": len(v), "seconds": round(sum(v), 3)} for name, v in top
            ],
            "persistent_cache": {
                "dir": os.environ.get("JAX_COMPILATION_CACHE_DIR"),
                "hits": self.events.get("cache_hits", 0),
                "misses": self.events.get("cache_misses", 0),
            },
        }


def compile_watch() -> CompileWatch:
    return JaxCompileWatch()


def eval_batch_size(n: int, batch: int) -> int:
    """A batch that divides ``n`` (one compiled evaluation step instead of two)."""
    return divisor_batch(n, batch)


def fused_adam(base: type) -> None:
    """None: under ``jax.jit`` XLA fuses Adam's element-wise update itself."""
    return None
