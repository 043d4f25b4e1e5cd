"""The reproducibility key: what must match for a cell to reproduce its baseline bit for bit.

On one machine type, with one lock, one backend and one thread setting, a deterministic
cell computes the same history and weights every time (tested). So where the keys match,
:mod:`harness.analysis.compare` asks for exactly that (the *exact tier*); where they differ, it
falls back to allowances calibrated by measured noise (the *statistical tier*).

* The **run key** (:func:`run_key`, from the environment fingerprint): the hardware
  identity (:func:`harness.env.hardware_identity`: CPU model and count, GPU name and
  count, Keras, the backend and its framework version), the CPU flags that pick numeric
  kernels, the lock digest, and the thread policy (:mod:`harness.threads`: its rule and
  any override set in the environment). Baselines are stored one per run key.
* A **cell** additionally needs the same resolved config (:func:`config_differences`),
  op determinism on both sides, and the same intra- and inter-op thread counts
  (:func:`cell_threads`: both change the last bits of a result).

What is deliberately *not* in the key: the git commit and the code (what the gate exists
to judge), the installed extras beyond the lock's (another extra does not change
TensorFlow's numbers), the container image id, paths and times.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from harness import backend, env
from harness.results import CellResult

KEY_VERSION = 1

# Config keys (dotted) that describe where, when or how often a cell ran rather than what
# it computed: paths on this machine, the devices seen, backend-specific switches, the
# number of repeats. The hardware and backend are judged from the run key instead.
IGNORED_CONFIG_KEYS: frozenset[str] = frozenset(
    {
        "run_id",
        "run_dir",
        "out_dir",
        "output_dir",
        "cell_id",
        "started_at",
        "weights_file",
        "devices",
        "determinism",
        "data_note",
        "optimizer.implementation",
        "repeats",
    }
)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict to dotted keys (``{"cpu": {"model": m}}`` -> ``{"cpu.model": m}``)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def run_key(fp: dict[str, Any]) -> dict[str, Any]:
    """The run-level reproducibility key of an environment fingerprint (plain JSON)."""
    cpu = fp.get("cpu") or {}
    policy = fp.get("thread_policy") or {}
    return {
        "version": KEY_VERSION,
        **env.hardware_identity(fp),
        "cpu.numerics_flags": sorted(cpu.get("numerics_flags") or []) or None,
        "lock": (fp.get("lock") or {}).get("digest"),
        "threads.rule": policy.get("rule"),
        "threads.overrides": dict(sorted((policy.get("overrides") or {}).items())) or None,
    }


def key_id(key: dict[str, Any]) -> str:
    """A short stable name for a key: sha256 of its canonical JSON, 12 hex digits."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def complete(key: dict[str, Any]) -> bool:
    """Whether a key pins enough to promise bit-identity: the machine, the lock, the backend
    and the thread rule must all be known (a fingerprint from before they were recorded
    never matches exactly)."""
    return all(key.get(k) for k in ("cpu.model", "backend", "lock", "threads.rule"))


def _short(value: Any) -> str:
    text = "unknown" if value is None else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def differences(base: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """The fields of two run keys that differ, in words (``cpu.model: A -> B``)."""
    keys = [*base, *(k for k in run if k not in base)]
    return [
        f"{k}: {_short(base.get(k))} -> {_short(run.get(k))}"
        for k in keys
        if base.get(k) != run.get(k)
    ]


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Dotted config keys that differ between two cells (ignoring where/when/how-often keys)."""

    def kept(key: str) -> bool:
        parts = key.split(".")
        return not any(".".join(parts[:i]) in IGNORED_CONFIG_KEYS for i in range(1, len(parts) + 1))

    fa = {k: v for k, v in flatten(a).items() if kept(k)}
    fb = {k: v for k, v in flatten(b).items() if kept(k)}
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def cell_threads(cell: CellResult) -> str | None:
    """The intra-/inter-op thread counts a cell ran with, as ``"intra 1, inter 1"``: its
    recorded thread plan, else the ``TF_NUM_*_THREADS`` it saw ("default" when unset);
    None when not recorded."""
    placement = cell.extra.get("placement") if isinstance(cell.extra, dict) else None
    if not isinstance(placement, dict):
        return None
    plan = placement.get("thread_plan")
    if isinstance(plan, dict) and "intra_op" in plan:
        intra, inter = plan.get("intra_op"), plan.get("inter_op")
    else:
        seen = placement.get("threads")
        if not isinstance(seen, dict):
            return None
        intra, inter = seen.get("TF_NUM_INTRAOP_THREADS"), seen.get("TF_NUM_INTEROP_THREADS")
    shown = ["default" if v is None else str(v) for v in (intra, inter)]
    return f"intra {shown[0]}, inter {shown[1]}"


def cell_exact_problem(base: CellResult, run: CellResult) -> str | None:
    """Why two cells of matching run keys and configs cannot be held to bit-identity
    (None: they can): op determinism off on a side, or another intra-op thread count."""
    if not (base.deterministic and run.deterministic):
        side = "baseline" if not base.deterministic else "run"
        return f"op determinism off in the {side}"
    tb, tr = cell_threads(base), cell_threads(run)
    if tb is None or tr is None or tb != tr:
        return f"threads {_short(tb)} -> {_short(tr)}"
    return None


def _backend_of(cell: CellResult) -> str | None:
    info = cell.extra.get("backend") if isinstance(cell.extra, dict) else None
    name = info.get("name") if isinstance(info, dict) else None
    return name if isinstance(name, str) else None


def _jit_is_backend_default(cell: CellResult, name: str | None) -> bool:
    if name is None:
        return False
    try:
        return cell.config.get("jit_compile") == backend.resolve_jit_compile(None, name)
    except ValueError:  # a backend this harness does not know (harness.backends.load)
        return False


def cell_config_differences(base: CellResult, run: CellResult) -> list[str]:
    """:func:`config_differences` of two cells' configs, where a cell of another backend may
    differ in ``jit_compile`` when each side runs its backend's default (JAX always
    compiles, TensorFlow runs a graph): the backend decided it, not the profile, and the
    backend is already part of the key that sends such a pair to the statistical tier."""
    diffs = config_differences(base.config, run.config)
    base_backend, run_backend = _backend_of(base), _backend_of(run)
    if (
        "jit_compile" in diffs
        and base_backend != run_backend
        and _jit_is_backend_default(base, base_backend)
        and _jit_is_backend_default(run, run_backend)
    ):
        diffs.remove("jit_compile")
    return diffs
