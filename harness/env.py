"""The environment fingerprint stored with every run (``bench env`` prints it).

Cheap by design: nothing here imports TensorFlow (versions come from package metadata,
CUDA/cuDNN from TensorFlow's build-info file, GPUs from ``nvidia-smi``), so the process
that orchestrates a run never initialises a GPU of its own.

Hardware identity (whether throughput is comparable): ``cpu.model``, ``cpu.count``,
``gpu.name``, ``gpu.count``, ``backend`` and the framework versions — see
:func:`hardware_identity`. The container image id is recorded but not part of it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import __version__, backend
from harness.errors import BenchError

# Tracked paths whose uncommitted changes make a commit id an incomplete description.
_RESULT_PATHS = ("harness", "benchmarks", "data", "pyproject.toml", "Dockerfile")


def git_commit(root: Path | None = None) -> str | None:
    """HEAD of the checkout at ``root`` (default: the harness's), ``+dirty`` when tracked files
    that shape results (code, matrices, data manifest, dependencies) differ; None outside git."""
    root = root or Path(__file__).resolve().parent.parent
    if not shutil.which("git"):
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "diff", "--quiet", "HEAD", "--", *_RESULT_PATHS],
            capture_output=True, timeout=10,
        ).returncode  # fmt: skip
    except (subprocess.SubprocessError, OSError):
        return None
    return f"{head}+dirty" if dirty == 1 else head


def gpu_info() -> dict[str, Any] | None:
    """Name, count, driver and max clocks of the NVIDIA GPUs (``nvidia-smi``); None if none."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    query = "name,driver_version,clocks.max.sm,clocks.max.mem"
    try:
        out = subprocess.run(
            [smi, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (subprocess.SubprocessError, OSError):
        return None
    rows = [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line]
    if not rows:
        return None
    name, driver, sm, mem = (rows[0] + ["", "", "", ""])[:4]
    return {
        "name": name,
        "count": len(rows),
        "driver": driver or None,
        "clocks": {"max_sm_mhz": _int(sm), "max_mem_mhz": _int(mem)},
    }


def _int(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def container_info(image_json: Path | None = None) -> dict[str, Any] | None:
    """Image id/digest (from the environment) and build provenance (baked into the image).

    The provenance leaves out the full package list and keeps its digest; a corrupt
    image.json is reported in the fingerprint rather than failing the run.
    """
    from harness.container import IMAGE_JSON, container_fingerprint

    try:
        return container_fingerprint(path=image_json or IMAGE_JSON)
    except BenchError as exc:
        return {"image_id": os.environ.get("BENCH_IMAGE_ID"), "build": {"error": exc.message}}


def manifest_digest() -> str | None:
    try:
        from harness.manifest import load_manifest

        return load_manifest().digest
    except Exception:  # the fingerprint must not fail because the manifest does
        return None


def fingerprint(backend_name: str | None = None) -> dict[str, Any]:
    """The environment fingerprint (keys fixed by the contracts)."""
    versions = backend.framework_versions()
    build = backend.build_info()
    container = container_info()
    # Inside the image there is no .git: the commit it was built from, if recorded.
    image_commit = ((container or {}).get("build") or {}).get("git_commit")
    return {
        "harness_version": __version__,
        "git_commit": git_commit() or image_commit or None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "keras": versions["keras"],
        "backend": backend_name or backend.configured_backend(),
        "tensorflow": versions["tensorflow"],
        "jax": versions["jax"],
        "torch": versions["torch"],
        "cuda": build["cuda"],
        "cudnn": build["cudnn"],
        "gpu": gpu_info(),
        "cpu": {"model": backend.cpu_model(), "count": os.cpu_count()},
        "container": container,
        "manifest_digest": manifest_digest(),
    }


def hardware_identity(fp: dict[str, Any]) -> dict[str, Any]:
    """The part of a fingerprint that must match for throughput to be comparable."""
    gpu = fp.get("gpu") or {}
    cpu = fp.get("cpu") or {}
    return {
        "cpu.model": cpu.get("model"),
        "cpu.count": cpu.get("count"),
        "gpu.name": gpu.get("name"),
        "gpu.count": gpu.get("count"),
        **{k: fp.get(k) for k in ("backend", "tensorflow", "jax", "torch", "keras")},
    }


if __name__ == "__main__":  # pragma: no cover
    json.dump(fingerprint(), sys.stdout, indent=2, sort_keys=True)
    print()
