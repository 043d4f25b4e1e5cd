"""Typed records of what a run measured: the contract between runner, compare and report.

A cell result is written as ``reports/runs/<run-id>/cells/<cell-id with / as __>.json``
and the run's own record as ``run.json``. Both are versioned JSON (see
:mod:`harness.jsonio`); :func:`cell_from_dict` / :func:`run_from_dict` refuse anything
that does not match these dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import jsonio
from harness.errors import InputError

CELL_KIND = "transfer-bench.cell"
CELL_SCHEMA = 1
RUN_KIND = "transfer-bench.run"
RUN_SCHEMA = 1


@dataclass(frozen=True)
class Spread:
    """Summary of repeated measurements: median and inter-quartile range, plus extremes."""

    n: int
    median: float
    p25: float
    p75: float
    mean: float
    stdev: float
    min: float
    max: float

    @property
    def iqr(self) -> float:
        return self.p75 - self.p25

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("Spread.of needs at least one value")
        vals = sorted(float(v) for v in values)
        if len(vals) >= 2:
            q = statistics.quantiles(vals, n=4, method="inclusive")
            p25, p75 = q[0], q[2]
        else:
            p25 = p75 = vals[0]
        return cls(
            n=len(vals),
            median=statistics.median(vals),
            p25=p25,
            p75=p75,
            mean=statistics.fmean(vals),
            stdev=statistics.stdev(vals) if len(vals) >= 2 else 0.0,
            min=vals[0],
            max=vals[-1],
        )


@dataclass(frozen=True)
class Throughput:
    """Images per second of one phase, with what the number means stated next to it.

    ``images_per_s`` is ``batch_size / step_seconds.median``; ``images_per_s_p25`` and
    ``_p75`` come from the step-time quartiles (p75 of time gives p25 of rate).
    """

    phase: str  # "train" or "inference"
    images_per_s: float
    images_per_s_p25: float
    images_per_s_p75: float
    batch_size: int
    precision: str
    input: str  # "real" (prepared cache) or "synthetic"
    warmup_steps: int
    step_seconds: Spread
    step_series: tuple[float, ...] = ()  # the measured (post-warm-up) step times, in order

    @classmethod
    def from_steps(
        cls,
        phase: str,
        step_seconds: Sequence[float],
        *,
        batch_size: int,
        precision: str,
        input_kind: str,
        warmup_steps: int,
    ) -> Throughput:
        """From measured post-warm-up step times (rate quartiles from time quartiles)."""
        spread = Spread.of(step_seconds)
        return cls(
            phase=phase,
            images_per_s=batch_size / spread.median,
            images_per_s_p25=batch_size / spread.p75,
            images_per_s_p75=batch_size / spread.p25,
            batch_size=batch_size,
            precision=precision,
            input=input_kind,
            warmup_steps=warmup_steps,
            step_seconds=spread,
            step_series=tuple(float(s) for s in step_seconds),
        )

    @property
    def relative_spread(self) -> float:
        """IQR of the rate divided by its median: the noise a comparison must allow for."""
        if self.images_per_s <= 0:
            return math.inf
        return (self.images_per_s_p75 - self.images_per_s_p25) / self.images_per_s


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of training as Keras reported it, plus its wall time."""

    epoch: int
    loss: float
    accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    learning_rate: float
    seconds: float


@dataclass(frozen=True)
class CellResult:
    """Everything one cell measured, or why it failed (``status == "failed"``)."""

    cell_id: str
    dataset: str
    strategy: str
    precision: str
    seed: int
    backend: str
    status: str  # "ok" or "failed"
    config: dict[str, Any]  # the resolved cell config, as plain JSON
    deterministic: bool
    error: str | None = None
    history: tuple[EpochRecord, ...] = ()
    best_train_accuracy: float | None = None
    best_val_accuracy: float | None = None
    final_val_accuracy: float | None = None
    test_accuracy: float | None = None
    target_accuracy: float | None = None
    time_to_target_s: float | None = None  # training seconds until val accuracy >= target
    epochs_to_target: int | None = None
    train_throughput: Throughput | None = None
    inference_throughput: Throughput | None = None
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None  # e.g. "gpu:0 peak" or "host max rss"
    wall_seconds: float = 0.0
    weights_digest: str | None = None  # sha256 of the trained weights, for determinism checks
    trainable_layers: int | None = None
    frozen_layers: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class RunInfo:
    """The run's own record: what was asked, on what, from which inputs."""

    run_id: str
    profile: str
    matrix: dict[str, Any]  # the resolved matrix, as plain JSON
    environment: dict[str, Any]  # the environment fingerprint (harness.env)
    manifest_digest: str
    git_commit: str | None
    started_at: str  # ISO 8601, UTC
    cell_ids: tuple[str, ...]
    finished_at: str | None = None
    tolerances: dict[str, Any] = field(default_factory=dict)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass record as plain JSON-ready data (tuples become lists)."""
    return dataclasses.asdict(obj)


def _build(cls: type, data: Any, where: str) -> Any:
    """Construct dataclass ``cls`` from ``data``, recursively, refusing unknown/missing fields."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object for {cls.__name__}, got {data!r:.60}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields) - {"kind", "schema"})
    if unknown:
        raise InputError(f"{where}: unknown field(s) {unknown} in {cls.__name__}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InputError(f"{where}: missing field {name!r} in {cls.__name__}")
            continue
        kwargs[name] = _convert(f.type, data[name], f"{where}.{name}")
    return cls(**kwargs)


_NESTED = {"Spread": Spread, "Throughput": Throughput, "EpochRecord": EpochRecord}


def _convert(type_str: Any, value: Any, where: str) -> Any:
    t = str(type_str)
    for name, cls in _NESTED.items():
        if t.startswith(f"tuple[{name}"):
            return tuple(_build(cls, v, f"{where}[{i}]") for i, v in enumerate(value))
        if t.split(" |")[0] == name:
            return None if value is None else _build(cls, value, where)
    if t.startswith("tuple[") and isinstance(value, list):
        return tuple(value)
    return value


def cell_from_dict(data: dict[str, Any], where: str = "cell") -> CellResult:
    return _build(CellResult, data, where)


def run_from_dict(data: dict[str, Any], where: str = "run") -> RunInfo:
    return _build(RunInfo, data, where)


def cell_filename(cell_id: str) -> str:
    """File name of a cell result: the id with ``/`` replaced by ``__``."""
    return cell_id.replace("/", "__") + ".json"


def write_cell(run_dir: Path, result: CellResult) -> Path:
    path = Path(run_dir) / "cells" / cell_filename(result.cell_id)
    jsonio.write_json(path, to_dict(result), kind=CELL_KIND, schema=CELL_SCHEMA)
    return path


def read_cell(path: Path) -> CellResult:
    return cell_from_dict(jsonio.read_json(path, kind=CELL_KIND, schema=CELL_SCHEMA), str(path))


def write_run(run_dir: Path, info: RunInfo) -> Path:
    path = Path(run_dir) / "run.json"
    jsonio.write_json(path, to_dict(info), kind=RUN_KIND, schema=RUN_SCHEMA)
    return path


def read_run(run_dir: Path) -> RunInfo:
    path = Path(run_dir) / "run.json"
    return run_from_dict(jsonio.read_json(path, kind=RUN_KIND, schema=RUN_SCHEMA), str(path))


def read_cells(run_dir: Path) -> list[CellResult]:
    """All cell results of a run, sorted by cell id."""
    folder = Path(run_dir) / "cells"
    if not folder.is_dir():
        return []
    return sorted((read_cell(p) for p in folder.glob("*.json")), key=lambda c: c.cell_id)
