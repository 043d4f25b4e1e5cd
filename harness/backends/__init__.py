"""One module per Keras backend: adding a backend is adding one file to this package.

:mod:`harness.backend` is the facade the rest of the harness imports; it picks the module
of the backend a process runs on and adds what is the same for every backend (precision
rules, host memory, the learning-rate-scaled Adam). A backend module never imports its
framework at module level, so listing backends or reading versions imports nothing heavy,
and a cell imports only its own framework (a JAX cell never imports TensorFlow). Each
module defines:

=================================  ========================================================
``MODULE``                         the importable package (``find_spec`` says "installed")
``DISTRIBUTIONS``                  distributions whose version is the framework's version
``JIT_DEFAULT``                    what a cell that does not set ``jit_compile`` gets
``JIT_MEANING``                    ``{True: ..., False: ...}``: what each setting runs, in words
``prepare_process(deterministic)`` environment a process needs before Keras is imported
``enable_determinism() -> str``    turn op determinism on; returns how, for the result
``gpus() -> list[Device]``         the accelerators the framework sees
``reset_peak_memory()``            start a device peak-memory window (where it can)
``peak_memory()``                  ``(bytes, what it is)`` from device stats, or None
``sync(model)``                    return once the device finished the queued work
``fused_adam(base) -> type|None``  a faster Adam with the same update and per-variable
                                   factors, or None (``base`` is used)
``build_info() -> dict``           CUDA / cuDNN it was built with, read without importing it
``runtime_info() -> dict``         what the framework reports in a cell (platform, device)
``compile_watch() -> CompileWatch``  records compilations while open, where it can
``eval_batch_size(n, batch)``      batch size for validation / evaluate / predict of n
``JIT_SAFE_LAYERS`` (optional)     layer classes Keras calls un-compilable that this backend
                                   compiles (see :func:`harness.backend.enable_jit`)
=================================  ========================================================
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

DEFAULT = "tensorflow"


def names() -> tuple[str, ...]:
    """Every backend module in this package, the default (TensorFlow) first."""
    found = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return tuple(sorted(found, key=lambda n: (n != DEFAULT, n)))


def load(name: str) -> ModuleType:
    """The module of backend ``name`` (ValueError naming the known ones if there is none)."""
    if name not in names():
        raise ValueError(f"unknown backend {name!r} (known: {list(names())})")
    return importlib.import_module(f"{__name__}.{name}")
