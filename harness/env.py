"""The environment fingerprint stored with every run (``bench env`` prints it).

Cheap by design: nothing here imports TensorFlow (versions come from package metadata,
CUDA/cuDNN from TensorFlow's build-info file, GPUs from ``nvidia-smi``), so the process
that orchestrates a run never initialises a GPU of its own.

Besides the hardware, it records what makes numbers reproducible or not
(:func:`reproducibility`): the lock's digest and every installed distribution, numpy's
SIMD dispatch and the BLAS actually loaded, the CPU flags that change numerics, the
thread settings, and whether the checkout was dirty. :func:`reproducibility_differences`
says, in words, which of those differ between two fingerprints (``bench compare`` and the
report print it).

Hardware identity (whether throughput is comparable): ``cpu.model``, ``cpu.count``,
``gpu.name``, ``gpu.count``, ``backend``, Keras and that backend's framework version — see
:func:`hardware_identity`. The container image id is recorded but not part of it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import __version__, backend, cpuinfo, provenance, threads
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


def git_dirty_paths(root: Path | None = None) -> list[str] | None:
    """Tracked files that differ from HEAD (any path, not only result-shaping ones)."""
    root = root or Path(__file__).resolve().parent.parent
    if not shutil.which("git"):
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "diff", "--name-only", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (subprocess.SubprocessError, OSError):
        return None
    return sorted(line for line in out.splitlines() if line)


# Where the lock is: the checkout's uv.lock, else the copy baked into the image.
LOCK_FILES: tuple[Path, ...] = (
    Path(__file__).resolve().parent.parent / "uv.lock",
    Path("/etc/transfer-bench/uv.lock"),
)

# CPU flags (as /proc/cpuinfo names them) whose presence changes which kernels numpy,
# OpenBLAS, oneDNN and XLA pick, and so the last bits of float results.
NUMERICS_FLAGS: tuple[str, ...] = (
    "sse4_2", "avx", "avx2", "fma", "f16c",
    "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "avx512ifma", "avx512vbmi", "amx_tile", "amx_int8", "amx_bf16",
    "amx_fp16", "asimd", "sve", "sve2", "bf16", "i8mm",
)  # fmt: skip

# Environment variables that set thread pools (unset means the library's default: all cores).
THREAD_VARS: tuple[str, ...] = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "XLA_FLAGS",
    "NPY_DISABLE_CPU_FEATURES",
)  # fmt: skip


def lock_info() -> dict[str, Any]:
    """sha256 of the uv.lock this environment was installed from (checkout, else image)."""
    for path in LOCK_FILES:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        return {"digest": hashlib.sha256(data).hexdigest(), "path": str(path)}
    return {"digest": None, "path": None}


def numpy_runtime() -> dict[str, Any]:
    """numpy's version, its SIMD dispatch (baseline and features found at run time) and the
    BLAS it actually loaded (threadpoolctl: library, version, kernel architecture)."""
    info: dict[str, Any] = {"version": None, "simd": None, "blas": None}
    try:
        import numpy as np
        from numpy._core import _multiarray_umath as umath

        info["version"] = np.__version__
        info["simd"] = {
            "baseline": list(umath.__cpu_baseline__),
            "dispatch_found": [f for f in umath.__cpu_dispatch__ if umath.__cpu_features__.get(f)],
            "dispatch_missing": [
                f for f in umath.__cpu_dispatch__ if not umath.__cpu_features__.get(f)
            ],
        }
    except (ImportError, AttributeError):
        return info
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {k: lib.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for lib in threadpool_info()
            if lib.get("user_api") == "blas"
        ] or None
    except ImportError:
        pass
    return info


def cpu_numerics_flags(flags: set[str] | None = None) -> list[str]:
    """The :data:`NUMERICS_FLAGS` this CPU has."""
    have = cpuinfo.flags() if flags is None else flags
    return [f for f in NUMERICS_FLAGS if f in have]


def thread_settings() -> dict[str, Any]:
    """Thread-pool variables as set (None: unset, the library default) and usable cores."""
    out: dict[str, Any] = {name: os.environ.get(name) for name in THREAD_VARS}
    try:
        out["affinity_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        out["affinity_cpus"] = os.cpu_count()
    return out


def reproducibility() -> dict[str, Any]:
    """The parts of the fingerprint that decide whether results can be bit-identical."""
    dists = provenance.installed_distributions()
    listing = "".join(f"{k}=={v}\n" for k, v in dists.items())
    dirty = git_dirty_paths()
    return {
        "lock": lock_info(),
        "packages": dists,
        "packages_digest": hashlib.sha256(listing.encode()).hexdigest(),
        "numpy": numpy_runtime(),
        "threads": thread_settings(),
        "git_dirty": None if dirty is None else bool(dirty),
        "git_dirty_paths": dirty,
    }


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
    try:
        return provenance.container_fingerprint(path=image_json or provenance.IMAGE_JSON)
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
        "cpu": {
            "model": backend.cpu_model(),
            "count": os.cpu_count(),
            "numerics_flags": cpu_numerics_flags(),
        },
        "container": container,
        "manifest_digest": manifest_digest(),
        "thread_policy": threads.policy(),
        **reproducibility(),
    }


def hardware_identity(fp: dict[str, Any]) -> dict[str, Any]:
    """The part of a fingerprint that must match for throughput to be comparable: the
    machine, Keras, the run's backend and that framework's version. Another framework that
    happens to be installed does not count (a TensorFlow run from an environment with the
    jax extra compares with one from an environment without it)."""
    gpu = fp.get("gpu") or {}
    cpu = fp.get("cpu") or {}
    name = fp.get("backend")
    return {
        "cpu.model": cpu.get("model"),
        "cpu.count": cpu.get("count"),
        "gpu.name": gpu.get("name"),
        "gpu.count": gpu.get("count"),
        "backend": name,
        "keras": fp.get("keras"),
        **{k: fp.get(k) for k in ("tensorflow", "jax", "torch") if k == name},
    }


def _digest(value: Any) -> str:
    return "none" if value is None else str(value)[:12]


# What a cell imports that decides its numbers, where the cells did not record their imports
# (results from before they did): the frameworks and the array and image libraries.
RESULT_PACKAGES: frozenset[str] = frozenset(
    {
        "keras", "tensorflow", "tensorflow-cpu", "tf-nightly", "jax", "jaxlib", "torch",
        "numpy", "pillow", "h5py", "ml-dtypes", "scipy", "optree", "jax-cuda12-plugin",
        "nvidia-cudnn-cu12", "nvidia-cublas-cu12",
    }
)  # fmt: skip


def imported_distributions() -> dict[str, str]:
    """``{distribution: version}`` of every installed distribution this process has
    imported a top-level module of: what a cell's numbers can depend on."""
    try:
        owners = importlib.metadata.packages_distributions()
    except Exception:  # metadata of a broken install must not fail a cell
        return {}
    installed = provenance.installed_distributions()
    names = {m.split(".", 1)[0] for m in list(sys.modules)}
    out: dict[str, str] = {}
    for name in names:
        for dist in owners.get(name, ()):
            key = dist.lower().replace("_", "-").replace(".", "-")
            if key in installed:
                out[key] = installed[key]
    return dict(sorted(out.items()))


def _differs(label: str, base: str, run: str) -> str | None:
    """``label: base -> run``, or None when the two print the same (never show a line
    whose sides look alike)."""
    return None if base == run else f"{label}: {base} -> {run}"


def reproducibility_differences(
    base: dict[str, Any], run: dict[str, Any], *, imported: set[str] | None = None
) -> list[str]:
    """What differs between two fingerprints in what decides reproducibility, in words.

    One line per aspect (lock, packages, numpy SIMD and BLAS, CPU numerics flags, thread
    settings, dirty checkout); an aspect the older fingerprint did not record says so.
    Packages: only those the cells import (``imported``: the distributions their results
    recorded, else :data:`RESULT_PACKAGES`); another extra installed beside them changes
    nothing a cell computes. No line is printed whose two sides would read the same.
    """
    lines: list[str] = []

    def absent(key: str) -> bool:
        return key not in base or key not in run

    lb, lr = (base.get("lock") or {}).get("digest"), (run.get("lock") or {}).get("digest")
    if absent("lock"):
        lines.append("lock digest: not recorded on one side")
    elif lb != lr:
        lines.append(f"lock digest: {_digest(lb)} -> {_digest(lr)}")

    if absent("packages"):
        lines.append("installed packages: not recorded on one side")
    else:
        relevant = imported if imported else RESULT_PACKAGES
        pb = {k: v for k, v in (base.get("packages") or {}).items() if k in relevant}
        pr = {k: v for k, v in (run.get("packages") or {}).items() if k in relevant}
        changed = [
            f"{k} {pb[k]} -> {pr[k]}" for k in sorted(pb.keys() & pr.keys()) if pb[k] != pr[k]
        ]
        added = [f"+{k} {pr[k]}" for k in sorted(pr.keys() - pb.keys())]
        removed = [f"-{k} {pb[k]}" for k in sorted(pb.keys() - pr.keys())]
        everything = changed + added + removed
        if everything:
            shown = ", ".join(everything[:8])
            more = f" (+{len(everything) - 8} more)" if len(everything) > 8 else ""
            lines.append(f"packages the cells import: {shown}{more}")

    nb, nr = base.get("numpy") or {}, run.get("numpy") or {}
    if not absent("numpy"):
        sb = set((nb.get("simd") or {}).get("dispatch_found") or [])
        sr = set((nr.get("simd") or {}).get("dispatch_found") or [])
        if sb != sr:
            lines.append(
                f"numpy SIMD dispatch: only baseline {sorted(sb - sr) or '-'}, "
                f"only run {sorted(sr - sb) or '-'}"
            )
        blas = _differs("BLAS", _blas(nb.get("blas")), _blas(nr.get("blas")))
        if blas:
            lines.append(blas)

    fb = (base.get("cpu") or {}).get("numerics_flags")
    fr = (run.get("cpu") or {}).get("numerics_flags")
    if fb is None or fr is None:
        if fb != fr:
            lines.append("CPU numerics flags: not recorded on one side")
    elif set(fb) != set(fr):
        lines.append(
            f"CPU numerics flags: only baseline {sorted(set(fb) - set(fr)) or '-'}, "
            f"only run {sorted(set(fr) - set(fb)) or '-'}"
        )

    if not absent("threads"):
        tb, tr = base.get("threads") or {}, run.get("threads") or {}
        diff = [
            f"{k} {tb.get(k)} -> {tr.get(k)}"
            for k in sorted(tb.keys() | tr.keys())
            if str(tb.get(k)) != str(tr.get(k))
        ]
        if diff:
            lines.append("threads: " + ", ".join(diff))
    pb_, pr_ = base.get("thread_policy"), run.get("thread_policy")
    if pb_ != pr_:
        line = _differs("thread rule", _policy(pb_), _policy(pr_))
        if line:
            lines.append(line)

    db, dr = base.get("git_dirty"), run.get("git_dirty")
    if db or dr:
        lines.append(
            f"checkout: baseline {'dirty' if db else 'clean'}, run {'dirty' if dr else 'clean'}"
        )
    return lines


def _policy(policy: Any) -> str:
    if not isinstance(policy, dict):
        return "not recorded (framework defaults)"
    overrides = policy.get("overrides") or {}
    shown = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    return f"{policy.get('rule')}" + (f" with {shown}" if shown else "")


def _blas(libs: Any) -> str:
    if not libs:
        return "unknown"
    return "; ".join(
        f"{lib.get('internal_api')} {lib.get('version')} ({lib.get('architecture')}, "
        f"{lib.get('num_threads')} threads)"
        for lib in libs
    )


if __name__ == "__main__":  # pragma: no cover
    json.dump(fingerprint(), sys.stdout, indent=2, sort_keys=True)
    print()
