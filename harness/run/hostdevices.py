"""The devices a backend will see, found without importing any framework.

The pre-flight runs in the orchestrating process, which must never import TensorFlow (or
JAX, or torch): importing one takes seconds and may initialise a GPU. So the GPUs come
from ``nvidia-smi`` (index, name, compute capability), filtered by
``CUDA_VISIBLE_DEVICES``, and count only when the backend's installed build can use them
(TensorFlow's build-info file names a CUDA version; a ``jax-cuda`` plugin is installed;
torch's ``version.py`` names a CUDA version). The CPU comes from ``/proc/cpuinfo``.
:func:`harness.backend.precision_problem` then applies the same rules the cell applies.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

from harness import backend, cpuinfo

_HIDDEN = ("", "-1", "none", "nodevfiles", "void")


def _visible(index: str, uuid: str) -> bool:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return True
    wanted = [w.strip() for w in env.split(",")]
    if env.strip().lower() in _HIDDEN:
        return False
    return index in wanted or any(w and uuid.startswith(w) for w in wanted)


def _cc(text: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _driver_gpus() -> tuple[backend.Device, ...]:
    """GPUs the NVIDIA driver lists when ``nvidia-smi`` is absent (capability unknown)."""
    folder = Path("/proc/driver/nvidia/gpus")
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and env.strip().lower() in _HIDDEN:
        return ()
    try:
        found = sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        found = []
    return tuple(backend.Device("GPU", f"NVIDIA GPU {p.name}", None) for p in found)


@functools.cache
def nvidia_gpus() -> tuple[backend.Device, ...]:
    """The visible NVIDIA GPUs per ``nvidia-smi`` (compute capability None if it cannot say;
    without ``nvidia-smi``, the driver's list with unknown capabilities)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return _driver_gpus()
    for fields in ("index,uuid,name,compute_cap", "index,uuid,name"):
        try:
            out = subprocess.run(
                [smi, f"--query-gpu={fields}", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout  # fmt: skip
        except (subprocess.SubprocessError, OSError):
            continue
        found = []
        for line in out.strip().splitlines():
            cols = [c.strip() for c in line.split(",")]
            if len(cols) < 3 or not _visible(cols[0], cols[1]):
                continue
            cc = _cc(cols[3]) if len(cols) > 3 else None
            found.append(backend.Device("GPU", cols[2], cc))
        return tuple(found)
    return ()


def _tensorflow_has_cuda() -> bool | None:
    spec = importlib.util.find_spec("tensorflow")
    if spec is None:
        return None
    return bool(backend.build_info().get("cuda"))


def _jax_has_cuda() -> bool | None:
    if importlib.util.find_spec("jax") is None:
        return None
    plugins = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_cuda11_plugin")
    return any(importlib.util.find_spec(p) is not None for p in plugins)


def _torch_has_cuda() -> bool | None:
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        version = Path(loc) / "version.py"
        try:
            text = version.read_text()
        except OSError:
            continue
        m = re.search(r"^cuda\b[^=\n]*=\s*(.+)$", text, re.MULTILINE)
        return bool(m and m.group(1).strip() not in ("None", "''", '""'))
    return None


def backend_uses_gpus(name: str) -> bool:
    """Whether ``name``'s installed build can use a GPU (True when it cannot be told)."""
    probe = {"tensorflow": _tensorflow_has_cuda, "jax": _jax_has_cuda, "torch": _torch_has_cuda}
    check = probe.get(name)
    answer = check() if check else None
    return True if answer is None else answer


def devices(backend_name: str) -> list[backend.Device]:
    """What a cell on ``backend_name`` will see: usable GPUs first, then the host CPU."""
    gpus = list(nvidia_gpus()) if backend_uses_gpus(backend_name) else []
    return [*gpus, backend.Device("CPU", cpuinfo.model())]


def precision_problem(precision: str, backend_name: str) -> str | None:
    """Why a cell on ``backend_name`` cannot run ``precision`` here (None: it can, or the
    pre-flight cannot tell: a GPU whose compute capability ``nvidia-smi`` did not report)."""
    devs = devices(backend_name)
    if any(d.kind == "GPU" and d.compute_capability is None for d in devs):
        return None  # the cell checks again with the backend's own view
    return backend.precision_problem(precision, devs)
