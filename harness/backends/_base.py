"""What every backend module shares: the device record and the compile watch's shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Device:
    """One compute device as the backend sees it."""

    kind: str  # "GPU" or "CPU"
    name: str
    compute_capability: tuple[int, int] | None = None


class CompileWatch:
    """Compilations seen while open (a context manager); this base class sees none.

    A backend that can observe its compiler (JAX's monitoring events) subclasses it;
    :meth:`summary` is then a dict for the cell result, else None ("not observable").
    """

    def __enter__(self) -> CompileWatch:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def summary(self) -> dict[str, Any] | None:
        return None


def divisor_batch(n: int, batch: int, *, most: int = 8) -> int:
    """The smallest batch in ``[batch, most × batch]`` that divides ``n`` evenly, else ``batch``.

    For a backend that compiles per input shape: one batch shape for a whole evaluation
    pass instead of a second compilation for the remainder. Evaluation does not depend on
    how examples are batched (per-example outputs, metrics weighted by examples).
    """
    if n <= batch:
        return max(n, 1)
    for b in range(batch, min(n, most * batch) + 1):
        if n % b == 0:
            return b
    return batch
