"""``--shard i/n``: a stable 1/n of a run's cells, for CI matrices split over machines.

A cell belongs to shard ``1 + (sha256(cell id) mod n)``: the same cell lands in the same
shard on every machine, whatever else the matrix holds or ``--only`` selects, so ``n``
jobs with ``--shard 1/n`` … ``--shard n/n`` run every cell exactly once between them, and
``bench merge`` (:mod:`harness.commands.merge`) puts their runs back together. The split is by
hash, not balanced: with few cells a shard may get more than its share, or none (an
empty shard is a run with no cells, and merges like any other).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from harness.errors import InputError
from harness.matrix import CellSpec

_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, cell_id: str) -> bool:
        return shard_of(cell_id, self.count) == self.index

    def select(self, cells: Iterable[CellSpec]) -> tuple[CellSpec, ...]:
        return tuple(c for c in cells if self.holds(c.cell_id))


def shard_of(cell_id: str, count: int) -> int:
    """The 1-based shard of ``cell_id`` among ``count``."""
    digest = hashlib.sha256(cell_id.encode()).digest()
    return 1 + int.from_bytes(digest[:8], "big") % count


def parse_shard(text: str) -> Shard:
    """``i/n`` with 1 <= i <= n (InputError naming the value otherwise)."""
    m = _SPEC.fullmatch(text)
    if not m:
        raise InputError(f"--shard {text!r}: expected i/n, e.g. 1/4 (shard i of n)")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise InputError(f"--shard {text!r}: expected 1 <= i <= n, got i={i}, n={n}")
    return Shard(i, n)
