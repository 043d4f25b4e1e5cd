"""The host CPU as Linux describes it (``/proc/cpuinfo``): model name and feature flags.

Framework-free and cheap, so the orchestrating process, the pre-flight and the
fingerprint can ask what the CPU can do (AVX-512, AMX, bf16) without importing a backend.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def _fields() -> dict[str, str]:
    """The first processor's ``key: value`` lines (empty where /proc/cpuinfo is absent)."""
    out: dict[str, str] = {}
    try:
        text = CPUINFO.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        if not line.strip():
            if out:
                break  # end of the first processor's block
            continue
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


def model() -> str:
    """``model name`` (x86) or the closest thing there is (arm64: ``CPU part``/machine)."""
    fields = _fields()
    return fields.get("model name") or platform.processor() or platform.machine()


def flags() -> frozenset[str]:
    """Feature flags (x86 ``flags``, arm64 ``Features``), e.g. ``avx2``, ``amx_bf16``."""
    fields = _fields()
    return frozenset((fields.get("flags") or fields.get("Features") or "").split())
