"""Known regressions, injected into a copy of the harness, to measure what the gate catches.

A gate is judged by what it catches: ``benchmarks/bench_gate.py`` runs the smoke matrix
with each of these and compares the runs with the baseline, and the tests do the same on
a tiny matrix. Nothing here changes the installed harness: :func:`patched_copy` copies the
``harness`` package into a folder of the caller's, edits the copy, and returns the folder
to put first on ``PYTHONPATH`` (cell processes inherit it, so every cell runs the copy).

* :data:`NUMERICS_BUG` — the classic preprocessing slip: ``Rescaling(1/255)`` instead of
  MobileNetV2's ``Rescaling(1/127.5, offset=-1)``; a one-line change of numerics.
* :func:`slowdown` — every timed training step made ``factor`` longer by busy-waiting
  inside the step timer's bracket (the CPU is kept busy, as a slower kernel would).
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.errors import BenchError


@dataclass(frozen=True)
class Injection:
    """A text edit of one module of the harness: ``old`` (exactly once) becomes ``new``;
    ``append`` is added at the end of the module."""

    name: str
    description: str
    module: str  # dotted name, e.g. "harness.cell.strategies"
    old: str = ""
    new: str = ""
    append: str = ""


NUMERICS_BUG = Injection(
    name="numerics",
    description="preprocessing Rescaling(1/255) instead of Rescaling(1/127.5, offset=-1)",
    module="harness.cell.strategies",
    old='keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")',
    new='keras.layers.Rescaling(1.0 / 255.0, name="preprocess")',
)

_SLOWDOWN = """

# --- injected by harness.perf.inject: every timed training step {percent:g} % longer ---
_INJECTED_FACTOR = {factor!r}
_injected_original_end = StepTimer.on_train_batch_end


def _injected_slow_end(self, batch, logs=None):
    self._sync(self.model)
    spent = time.perf_counter() - self._t0
    until = time.perf_counter() + _INJECTED_FACTOR * spent
    while time.perf_counter() < until:
        pass
    _injected_original_end(self, batch, logs)


StepTimer.on_train_batch_end = _injected_slow_end
"""


def slowdown(factor: float) -> Injection:
    """Every timed training step ``1 + factor`` times as long (``factor=0.25``: 25 %)."""
    if not 0 < factor < 10:
        raise ValueError(f"slowdown factor must be in (0, 10), got {factor!r}")
    return Injection(
        name=f"slowdown-{round(factor * 100)}",
        description=f"every training step {factor * 100:g} % slower (busy-wait in the step)",
        module="harness.cell.timing",
        append=_SLOWDOWN.format(factor=factor, percent=factor * 100),
    )


def package_dir() -> Path:
    """The folder of the ``harness`` package this process imports."""
    spec = importlib.util.find_spec("harness")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("harness.perf.inject: cannot locate the harness package", exit_code=3)
    return Path(next(iter(spec.submodule_search_locations)))


def patched_copy(injection: Injection, dest: Path) -> Path:
    """Copy the harness package to ``dest/harness`` and apply ``injection`` to the copy;
    returns ``dest`` (for ``PYTHONPATH``). Refuses an edit that does not match exactly once
    (the code it targets moved: the benchmark must be updated, not silently measure nothing)."""
    dest = Path(dest)
    target = dest / "harness"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(package_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    # The lock beside the package, as in a checkout: the fingerprint's lock digest (part
    # of the reproducibility key) must be the same as the original's.
    lock = package_dir().parent / "uv.lock"
    if lock.is_file():
        shutil.copy2(lock, dest / "uv.lock")
    rel = Path(*injection.module.split(".")[1:]).with_suffix(".py")
    path = target / rel
    text = path.read_text()
    if injection.old:
        found = text.count(injection.old)
        if found != 1:
            raise BenchError(
                f"injection {injection.name!r}: {injection.old!r} occurs {found} times in "
                f"{injection.module} (expected once); update harness/perf/inject.py",
                exit_code=3,
            )
        text = text.replace(injection.old, injection.new)
    path.write_text(text + injection.append)
    return dest
