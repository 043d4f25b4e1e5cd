"""How many threads a cell's framework uses: a measured rule, applied before Keras is imported.

Thread counts change both speed and numerics, so they are chosen here, once per cell
process, recorded in the cell result (``extra.threads``) and in the run's fingerprint
(``thread_policy``), and keyed on by the exact comparison tier (:mod:`harness.analysis.reprokey`).

The rule (:data:`RULE`), measured on the project's 2-core Intel Xeon CI machine (README,
"Threads"; ``bench perf`` re-measures it on any machine as ``thread_efficiency``):

* **intra-op threads** (TensorFlow's ``TF_NUM_INTRAOP_THREADS``, and the OpenMP/MKL/OpenBLAS
  pools, which oneDNN and numpy use) split one op across cores. They pay off only when an
  op is big enough: a training step of MobileNetV2 at 32 and 64 px, alpha 0.35, batch 32
  ran 1.1-1.6x *faster* on one thread than on two, at 96 px it was even, at 128 px two
  threads won by 18-20 %, at 224 px (alpha 1.0) by 1.4-1.7x. So the count is the step's
  work (forward multiply-accumulates of a batch, :func:`step_macs`: 0.15 GMAC at 64 px, 0.62 at 128)
  over :data:`MACS_PER_THREAD`, at least 1, at most the cores the process may use. On a
  many-core machine the same rule gives a 224 px, alpha 1.0, batch 64 cell 64 threads'
  worth of work, so it uses every core it has, as TensorFlow's own guidance (intra-op =
  physical cores for large models) would.
  Intra-op threads change the order of floating-point sums, so they change the last bits
  of every result: they are part of the reproducibility key.
* **inter-op threads** (``TF_NUM_INTEROP_THREADS``) run independent ops side by side. They
  break op determinism: a 128 px full-fine-tune cell with one intra-op thread gave the
  same weights digest twice with one inter-op thread and two different digests in two
  runs with two (measured; at 32 px the digests happened to agree). So a deterministic
  cell gets one inter-op thread (on the 32 px smoke cells two were 0-11 % faster, not
  more), a cell with ``deterministic = false`` gets the usable cores; both are recorded
  and keyed.
* A cell on a GPU leaves the host pools at the framework's defaults: the device does the
  work, the host threads only feed it.
* Any thread variable already set in the environment wins (``source: environment``), so
  ``TF_NUM_INTRAOP_THREADS=2 bench all`` still measures what it says.

The cores are the process's CPU affinity, which ``--jobs`` narrows per slot
(:mod:`harness.executors.local`): a 32 px cell gets one intra-op thread serially, under
``--jobs 2`` and on a Dask worker alike, so its numbers do not depend on the executor.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

RULE = "threads-v1"

# Variables that size the intra-op pools (one value for all: the plan's intra_op).
INTRA_VARS: tuple[str, ...] = (
    "TF_NUM_INTRAOP_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
)
INTER_VAR = "TF_NUM_INTEROP_THREADS"
USER_VARS: tuple[str, ...] = (*INTRA_VARS, INTER_VAR)

# Forward multiply-accumulates per image of MobileNetV2 at 224 px, by width (alpha), as
# keras.applications documents them; other widths are interpolated, sizes scale with area.
MACS_224: tuple[tuple[float, float], ...] = (
    (0.35, 59e6),
    (0.5, 97e6),
    (0.75, 209e6),
    (1.0, 300e6),
    (1.3, 509e6),
    (1.4, 582e6),
)

# Work of one training step (forward MACs of a batch) per intra-op thread: below this a
# second thread costs more in synchronisation than it saves (measured between 0.15 and
# 0.62 GMAC per step on 2 cores, README).
MACS_PER_THREAD = 0.3e9


@dataclass(frozen=True)
class ThreadPlan:
    """The thread settings of one cell process, and why."""

    intra_op: int | None  # None: the framework's default (all usable cores)
    inter_op: int | None
    cores: int  # usable cores (CPU affinity)
    source: str  # "rule" or "environment"
    reason: str
    rule: str = RULE

    def environment(self) -> dict[str, str]:
        """The variables to set before any framework starts (none for framework defaults)."""
        out: dict[str, str] = {}
        if self.intra_op is not None:
            out.update({var: str(self.intra_op) for var in INTRA_VARS})
        if self.inter_op is not None:
            out[INTER_VAR] = str(self.inter_op)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def usable_cores() -> int:
    """The cores this process may run on (its affinity; the CPU count where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def macs_per_image(image_size: int, alpha: float) -> float:
    """Forward MACs of one image through MobileNetV2 (interpolated from :data:`MACS_224`)."""
    points = sorted(MACS_224)
    if alpha <= points[0][0]:
        base = points[0][1] * (alpha / points[0][0]) ** 2
    elif alpha >= points[-1][0]:
        base = points[-1][1] * (alpha / points[-1][0]) ** 2
    else:
        for (a0, m0), (a1, m1) in itertools.pairwise(points):
            if a0 <= alpha <= a1:
                base = m0 + (m1 - m0) * (alpha - a0) / (a1 - a0)
                break
    return base * (image_size / 224.0) ** 2


def step_macs(image_size: int, alpha: float, batch_size: int) -> float:
    """Forward MACs of one training batch: the work the rule divides between threads."""
    return macs_per_image(image_size, alpha) * batch_size


def gpu_visible(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a cell here would see an NVIDIA GPU (``nvidia-smi`` present and
    ``CUDA_VISIBLE_DEVICES`` not hiding every device)."""
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return shutil.which("nvidia-smi") is not None


def plan(
    *,
    image_size: int,
    alpha: float,
    batch_size: int,
    deterministic: bool = True,
    cores: int | None = None,
    environ: Mapping[str, str] | None = None,
    gpu: bool | None = None,
) -> ThreadPlan:
    """The thread settings for a cell of this size on ``cores`` usable cores (pure but for
    the defaults: this process's affinity, environment and GPUs)."""
    environ = os.environ if environ is None else environ
    cores = usable_cores() if cores is None else max(1, cores)
    given = {var: environ[var] for var in USER_VARS if environ.get(var)}
    if given:
        intra = _int(given.get("TF_NUM_INTRAOP_THREADS") or given.get("OMP_NUM_THREADS"))
        inter = _int(given.get(INTER_VAR))
        shown = ", ".join(f"{k}={v}" for k, v in given.items())
        return ThreadPlan(intra, inter, cores, "environment", f"set in the environment: {shown}")
    if gpu if gpu is not None else gpu_visible(environ):
        return ThreadPlan(
            None, None, cores, "rule", "GPU cell: host pools at the framework's default"
        )
    work = step_macs(image_size, alpha, batch_size)
    wanted = max(1, math.floor(work / MACS_PER_THREAD))
    intra = min(cores, wanted)
    inter = 1 if deterministic else cores
    reason = (
        f"{work / 1e9:.2f} GMAC per step / {MACS_PER_THREAD / 1e9:g} GMAC per thread "
        f"-> {wanted}, on {cores} usable core(s); inter-op "
        + ("1 (deterministic)" if deterministic else f"{cores} (not deterministic)")
    )
    return ThreadPlan(intra, inter, cores, "rule", reason)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def apply(thread_plan: ThreadPlan, environ: dict[str, str] | None = None) -> None:
    """Set the plan's variables (before TensorFlow, XLA or OpenMP start their pools)."""
    target = os.environ if environ is None else environ
    for var, value in thread_plan.environment().items():
        target.setdefault(var, value)


def policy(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What decides the cells' thread counts in this run: the rule and any override set in
    the environment (recorded in the run's fingerprint; part of the reproducibility key)."""
    environ = os.environ if environ is None else environ
    overrides = {var: environ[var] for var in USER_VARS if environ.get(var)}
    return {"rule": RULE, "macs_per_thread": MACS_PER_THREAD, "overrides": overrides}
