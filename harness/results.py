"""Typed records of what a run measured: the contract between runner, compare and report.

A cell result (:data:`CELL`) and the run's own record (:data:`RUN`) are versioned JSON
(see :mod:`harness.jsonio`), kept in the run folder (:mod:`harness.runfolder`): an
older schema is upgraded by the record's upgrades, step by step, a newer one refused.
:func:`cell_from_dict` / :func:`run_from_dict` refuse anything that does not match
these dataclasses: an unknown or missing field, a value of the wrong
type (an int is an int, not a bool or a string), a number that is not finite or out of its
range (:data:`RANGES`: accuracies in [0, 1], rates, times and counts >= 0), a status or
phase not in its list. The refusal is an InputError naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness import jsonio
from harness.errors import InputError

CELL_KIND = "transfer-bench.cell"
CELL_SCHEMA = 1
RUN_KIND = "transfer-bench.run"
RUN_SCHEMA = 1
# Schema N -> the function lifting a schema-N object to N+1; one more with every bump, so
# the run folders, baselines and history already written stay readable.
CELL_UPGRADES: jsonio.Upgrades = {}
RUN_UPGRADES: jsonio.Upgrades = {}
CELL = jsonio.Record(CELL_KIND, CELL_SCHEMA, CELL_UPGRADES)
RUN = jsonio.Record(RUN_KIND, RUN_SCHEMA, RUN_UPGRADES)


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


# Allowed ranges, by "Class.field" (inclusive). Every float must also be finite.
_UNIT = (0.0, 1.0)
_NON_NEGATIVE = (0.0, math.inf)
RANGES: dict[str, tuple[float, float]] = {
    **{
        f"CellResult.{name}": _UNIT
        for name in (
            "best_train_accuracy",
            "best_val_accuracy",
            "final_val_accuracy",
            "test_accuracy",
            "target_accuracy",
        )
    },
    "EpochRecord.accuracy": _UNIT,
    "EpochRecord.val_accuracy": _UNIT,
    **{
        f"CellResult.{name}": _NON_NEGATIVE
        for name in (
            "seed",
            "time_to_target_s",
            "epochs_to_target",
            "peak_memory_bytes",
            "wall_seconds",
            "trainable_layers",
            "frozen_layers",
        )
    },
    **{f"EpochRecord.{n}": _NON_NEGATIVE for n in ("epoch", "learning_rate", "seconds")},
    **{
        f"Throughput.{n}": _NON_NEGATIVE
        for n in ("images_per_s", "images_per_s_p25", "images_per_s_p75", "warmup_steps")
    },
    "Throughput.batch_size": (1, math.inf),
    "Throughput.step_series": _NON_NEGATIVE,
    **{
        f"Spread.{n}": _NON_NEGATIVE
        for n in ("median", "p25", "p75", "mean", "stdev", "min", "max")
    },
    "Spread.n": (1, math.inf),
    "tolerance": _NON_NEGATIVE,
}
_INT_LIMIT = 2**63 - 1
# Allowed values of enumerated string fields.
CHOICES: dict[str, tuple[str, ...]] = {
    "CellResult.status": ("ok", "failed", "skipped"),
    "Throughput.phase": ("train", "inference"),
}


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _build(cls: type, data: Any, where: str) -> Any:
    """Construct dataclass ``cls`` from ``data``, recursively, refusing unknown/missing fields
    and values of the wrong type or out of range (InputError naming ``where`` and the field)."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object for {cls.__name__}, got {_describe(data)}")
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
        kwargs[name] = _convert(
            str(f.type), data[name], f"{where}.{name}", f"{cls.__name__}.{name}"
        )
    return cls(**kwargs)


_NESTED = {"Spread": Spread, "Throughput": Throughput, "EpochRecord": EpochRecord}


def _convert(type_str: str, value: Any, where: str, key: str) -> Any:
    """``value`` checked against the annotation ``type_str`` (and :data:`RANGES` by ``key``)."""
    if type_str.endswith(" | None"):
        return None if value is None else _convert(type_str[: -len(" | None")], value, where, key)
    if type_str.startswith("tuple[") and type_str.endswith(", ...]"):
        if not isinstance(value, list):
            raise InputError(f"{where}: expected a list, got {_describe(value)}")
        item = type_str[len("tuple[") : -len(", ...]")]
        return tuple(_convert(item, v, f"{where}[{i}]", key) for i, v in enumerate(value))
    if type_str in _NESTED:
        return _build(_NESTED[type_str], value, where)
    if type_str == "dict[str, Any]":
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected an object, got {_describe(value)}")
        return value
    if type_str == "bool":
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false, got {_describe(value)}")
        return value
    if type_str == "str":
        if not isinstance(value, str):
            raise InputError(f"{where}: expected a string, got {_describe(value)}")
        if key in CHOICES and value not in CHOICES[key]:
            raise InputError(f"{where}: expected one of {list(CHOICES[key])}, got {value!r}")
        return value
    if type_str in ("int", "float"):
        kinds = (int,) if type_str == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            wanted = "an integer" if type_str == "int" else "a number"
            raise InputError(f"{where}: expected {wanted}, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if type_str == "float" and not math.isfinite(number):
            raise InputError(f"{where}: expected a finite number, got {_describe(value)}")
        low, high = RANGES.get(key, (-math.inf, math.inf))
        if type_str == "int":  # what every JSON reader can hold (and float() of it works)
            low, high = max(low, -_INT_LIMIT), min(high, _INT_LIMIT)
        if not low <= value <= high:
            bounds = f">= {low:g}" if high in (math.inf, _INT_LIMIT) else f"in [{low:g}, {high:g}]"
            raise InputError(f"{where}: expected a number {bounds}, got {_describe(value)}")
        return number if type_str == "float" else value
    raise AssertionError(f"results: no check for field type {type_str!r} ({key})")  # a new type


def cell_from_dict(data: dict[str, Any], where: str = "cell") -> CellResult:
    return _build(CellResult, data, where)


def run_from_dict(data: dict[str, Any], where: str = "run") -> RunInfo:
    info = _build(RunInfo, data, where)
    check_tolerances(info.tolerances, f"{where}.tolerances")
    return info


TOLERANCE_KEYS = (
    "accuracy_points",
    "throughput_relative",
    "false_alarm_rate",
    "min_compared",
    "ab_relative",
)


def check_tolerances(tolerances: dict[str, Any], where: str) -> dict[str, Any]:
    """A run's or baseline's stored tolerances: each known key a finite number >= 0."""
    for key in TOLERANCE_KEYS:
        if key in tolerances:
            _convert("float", tolerances[key], f"{where}.{key}", "tolerance")
    return tolerances


def parse_cell(obj: Any, where: str) -> CellResult:
    """A cell result from a parsed JSON object with its header (a file, or a result shipped
    back by a worker): upgraded to :data:`CELL_SCHEMA`, then validated."""
    return cell_from_dict(CELL.check(obj, where), where)


def parse_run(obj: Any, where: str) -> RunInfo:
    """A run record from a parsed JSON object with its header, upgraded, then validated."""
    return run_from_dict(RUN.check(obj, where), where)
