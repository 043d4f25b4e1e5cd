"""Benchmark matrices: ``benchmarks/<profile>.toml`` parsed into frozen, validated cells.

A matrix file has a ``[profile]`` table (description), a ``[tolerances]`` table
(``accuracy_points``, ``throughput_relative``: the smallest change the gate flags, and its
fixed band where no noise was measured; optional ``false_alarm_rate``: the chance per run
that the statistical tier flags identical code, default 0.01; ``min_compared``: the
fraction of the run's cells the gate must have compared to pass, default 1.0;
``ab_relative``: what ``bench ab`` allows), an optional ``[baseline]`` table (what
``bench baseline record`` adds to calibrate the statistical tier: ``noise_seeds``, how many
other seeds each cell also runs with, and ``repeats``, how many processes each cell is
measured in), a ``[defaults]`` table (any :class:`CellSpec` field) and one or more
``[[cells]]`` groups. A group is
the product ``datasets × strategies × precisions × seeds`` (× ``backends``, optional);
every other key of the group overrides the defaults for those cells only. All validation
happens here, and every error names the file, the field and the bad value.

Cell id: ``<dataset>/<strategy>/<precision>/s<seed>``, and ``…/s<seed>/<backend>`` for a
cell whose group names a backend other than TensorFlow (``backends = ["tensorflow",
"jax"]`` gives ``synth-few/fine-tune/float32/s0`` and ``synth-few/fine-tune/float32/s0/jax``),
so ids of the default backend never change. A cell that names no backend runs on the run's
(``bench all --backend``, else ``$KERAS_BACKEND``, else TensorFlow). A pretrained strategy
run on a random backbone (``weights = "none"``) is labelled ``<strategy>-random`` so the id
never hides that the cell differs.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import fsio, paths
from harness.backends import DEFAULT as DEFAULT_BACKEND
from harness.backends import names as backend_names
from harness.errors import InputError

STRATEGIES: tuple[str, ...] = (
    "scratch",
    "feature-extract",
    "fine-tune",
    "full-fine-tune",
    "two-stage",
    "linear-probe",
)
PRECISIONS: tuple[str, ...] = ("float32", "mixed_float16", "mixed_bfloat16")
AUGMENTATIONS: tuple[str, ...] = ("none", "flip", "standard")
INPUTS: tuple[str, ...] = ("real", "synthetic")
NO_WEIGHTS = "none"
ENV_PROFILE = "BENCH_PROFILE"
DEFAULT_PROFILE = "smoke"
BACKBONE_LAYERS = 154  # MobileNetV2 include_top=False, at every alpha and input size
# Upper bounds on the counts that set how long a cell runs. Past them a value is a typo, not
# a benchmark (`epochs = 1e20` ran until killed): the published recipe trains 70 epochs,
# and a cell is one process that cannot stop half-way and resume.
MAX_EPOCHS = 10_000
MAX_STEPS = 1_000_000  # per epoch, or timed inference calls, or warm-up steps
SYNTHETIC_STEPS = 10  # train steps per epoch of a synthetic-input cell without steps_per_epoch


@dataclass(frozen=True)
class Tolerances:
    """What a comparison against a baseline allows before calling a change a regression."""

    accuracy_points: float  # absolute, in percentage points of accuracy
    throughput_relative: float  # relative drop of images/s, e.g. 0.10 = 10 %
    # bench ab: relative drop of interleaved A/B throughput that counts (None: its default)
    ab_relative: float | None = None
    false_alarm_rate: float = 0.01  # per run, for the statistical tier's limits
    min_compared: float = 1.0  # fraction of the run's ok cells the gate must compare

    def recorded(self) -> dict[str, float]:
        """What a run records (run.json ``tolerances``) and its comparison reads: every
        tolerance the gate uses, ``ab_relative`` only when the profile sets it."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class BaselineRecording:
    """What ``bench baseline record`` adds to a profile's run to calibrate the gate."""

    noise_seeds: int = 4  # each cell also runs with this many other seeds
    repeats: int = 5  # each cell is measured in this many processes

    def seed(self, cell_seed: int, k: int) -> int:
        """The k-th (1-based) noise seed of a cell: far from any seed a matrix names."""
        return cell_seed + 1000 * k


@dataclass(frozen=True)
class CellSpec:
    """One cell of a matrix, fully resolved: everything the runner needs, nothing implicit."""

    dataset: str
    strategy: str
    precision: str
    seed: int
    image_size: int = 224
    alpha: float = 1.0
    weights: str = NO_WEIGHTS  # manifest weights entry, or "none" (random init)
    batch_size: int = 32
    epochs: int = 70
    learning_rate: float = 1e-3
    fine_tune_k: int = 140  # fine-tune: the first K backbone layers stay frozen
    dense_units: int = 1024  # feature-extract / two-stage head: Dense units (0: none)
    head_epochs: int = 5  # two-stage: epochs of head warm-up before unfreezing
    backbone_lr_factor: float = 0.1  # two-stage: backbone LR = learning_rate × factor
    # Every backbone BatchNorm's moving-statistics momentum. 0.9 suits short runs (Keras'
    # MobileNetV2 uses 0.999, which leaves a few-epoch run evaluated with near-initial
    # statistics); the reference profiles set 0.999 explicitly, as the experiment had it.
    bn_momentum: float = 0.9
    reduce_lr: bool = False  # ReduceLROnPlateau on val_loss
    reduce_lr_factor: float = 0.5
    reduce_lr_patience: int = 3
    reduce_lr_min: float = 1e-6
    augmentation: str = "standard"
    target_accuracy: float | None = None  # time-to-target: val accuracy to reach
    warmup_steps: int = 3  # train steps excluded from the throughput figure
    inference_batch: int = 32
    inference_steps: int = 20
    inference_warmup: int = 3
    input: str = "real"  # "real": prepared cache; "synthetic": random uint8 stand-ins
    num_classes: int | None = None  # required with input = "synthetic"
    steps_per_epoch: int | None = None  # fixed step count (throughput profile)
    deterministic: bool = True  # op determinism (backend.enable_determinism)
    jit_compile: bool | None = None  # None: the backend's default (harness.backend)
    dry_run_steps: int = 2
    dry_run_batch: int = 4  # dry run only: a small batch keeps the full-size check cheap
    skip_if_unsupported: bool = False  # precision the device lacks: "skipped", not "failed"
    backend: str | None = None  # None: the run's backend (--backend, $KERAS_BACKEND, tensorflow)
    # How many times the cell runs, each a fresh process (harness.run.orchestrate): how often it
    # is measured, not what it computes; left out of to_dict() at 1, so runs and baselines
    # from before the field stay comparable.
    repeats: int = 1

    @property
    def pretrained(self) -> bool:
        return self.strategy != "scratch" and self.weights != NO_WEIGHTS

    @property
    def strategy_label(self) -> str:
        """The strategy as it appears in the cell id (``-random`` when weights are off)."""
        if self.strategy != "scratch" and self.weights == NO_WEIGHTS:
            return f"{self.strategy}-random"
        return self.strategy

    @property
    def cell_id(self) -> str:
        base = f"{self.dataset}/{self.strategy_label}/{self.precision}/s{self.seed}"
        if self.backend is None or self.backend == DEFAULT_BACKEND:
            return base
        return f"{base}/{self.backend}"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.repeats == 1:
            del data["repeats"]
        return data


@dataclass(frozen=True)
class Matrix:
    """A parsed profile: its cells (in file order) and its comparison tolerances."""

    profile: str
    path: Path
    description: str
    tolerances: Tolerances
    cells: tuple[CellSpec, ...]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    recording: BaselineRecording = field(default_factory=BaselineRecording)

    def cell(self, cell_id: str) -> CellSpec:
        for c in self.cells:
            if c.cell_id == cell_id:
                return c
        raise InputError(
            f"no cell {cell_id!r} in profile {self.profile!r} ({self.path}); "
            f"see `bench list --profile {self.profile}`"
        )

    def select(self, pattern: str | None) -> tuple[CellSpec, ...]:
        """Cells whose id matches the glob ``pattern`` (or contains it, if it has no wildcard)."""
        if pattern is None:
            return self.cells
        pats = [p.strip() for p in pattern.split(",") if p.strip()]
        if not pats:  # '' or ' , ': would silently mean "every cell"
            raise InputError(
                f"--only {pattern!r}: no cell pattern in it; give cell-id globs or substrings, "
                "comma-separated (see `bench list`), or leave --only out to run every cell"
            )

        def hit(cid: str) -> bool:
            return any(
                fnmatch.fnmatchcase(cid, p) if any(ch in p for ch in "*?[") else p in cid
                for p in pats
            )

        chosen = tuple(c for c in self.cells if hit(c.cell_id))
        if not chosen:
            raise InputError(
                f"--only {pattern!r} matches no cell of profile {self.profile!r}; "
                f"see `bench list --profile {self.profile}`"
            )
        return chosen

    def for_baseline(
        self, cells: tuple[CellSpec, ...] | None = None
    ) -> tuple[tuple[CellSpec, ...], dict[str, Any]]:
        """The cells ``bench baseline record`` runs, and what run.json records about them:
        each cell measured in ``recording.repeats`` processes, plus each cell under
        ``recording.noise_seeds`` other seeds (one process each), whose results calibrate
        the statistical tier (:mod:`harness.analysis.noise`)."""
        rec = self.recording
        out: list[CellSpec] = []
        noise_cells: dict[str, list[str]] = {}
        for cell in cells if cells is not None else self.cells:
            out.append(dataclasses.replace(cell, repeats=max(cell.repeats, rec.repeats)))
            extra = [
                dataclasses.replace(cell, seed=rec.seed(cell.seed, k), repeats=1)
                for k in range(1, rec.noise_seeds + 1)
            ]
            noise_cells[cell.cell_id] = [c.cell_id for c in extra]
            out += extra
        return tuple(out), {**dataclasses.asdict(rec), "noise_cells": noise_cells}

    def to_dict(self) -> dict[str, Any]:
        """The resolved matrix as plain JSON (stored in run.json)."""
        return {
            "profile": self.profile,
            "path": str(self.path),
            "description": self.description,
            "tolerances": dataclasses.asdict(self.tolerances),
            "baseline": dataclasses.asdict(self.recording),
            "cells": [c.to_dict() for c in self.cells],
        }


_FIELDS = {f.name: f for f in dataclasses.fields(CellSpec)}
_AXES = {
    "datasets": "dataset",
    "strategies": "strategy",
    "precisions": "precision",
    "seeds": "seed",
    "backends": "backend",
}
_OPTIONAL_AXES: dict[str, list[Any]] = {"backends": [None]}  # absent: the run's backend
_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "float | None": (int, float),
    "int | None": (int,),
    "bool | None": (bool,),
    "str | None": (str,),
}


def profile_path(profile: str) -> Path:
    """``benchmarks/<profile>.toml``, or ``profile`` itself when it is a path to a .toml file."""
    if profile.endswith(".toml") or "/" in profile:
        return Path(profile)
    return paths.benchmarks_dir() / f"{profile}.toml"


def available_profiles() -> list[str]:
    folder = paths.benchmarks_dir()
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def load_matrix(profile: str) -> Matrix:
    """Parse and validate a profile by name (``benchmarks/NAME.toml``) or path."""
    path = profile_path(profile)
    if not path.is_file():
        known = ", ".join(available_profiles()) or "none"
        raise InputError(
            f"no matrix file for profile {profile!r} ({path}); known profiles: {known}"
        )
    try:
        data = tomllib.loads(fsio.read_text(path))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise InputError(f"{path}: not valid TOML (nested too deeply)") from None
    return parse_matrix(data, path=path, profile=path.stem)


def parse_matrix(data: dict[str, Any], *, path: Path, profile: str) -> Matrix:
    """Validate the TOML data of a matrix and expand its groups into cells."""
    unknown = sorted(set(data) - {"profile", "tolerances", "baseline", "defaults", "cells"})
    if unknown:
        raise InputError(f"{path}: unknown top-level table(s) {unknown}")
    prof = _table(data, "profile", path, required=False)
    description = prof.get("description", "")
    if not isinstance(description, str):
        raise InputError(f"{path}: profile.description must be a string, got {description!r}")
    tolerances = _tolerances(_table(data, "tolerances", path, required=True), path)
    recording = _recording(_table(data, "baseline", path, required=False), path)
    defaults = _table(data, "defaults", path, required=False)
    _check_fields(defaults, f"{path}: defaults", axes_allowed=False)
    groups = data.get("cells")
    if not isinstance(groups, list) or not groups:
        raise InputError(f"{path}: expected at least one [[cells]] group")
    cells: list[CellSpec] = []
    seen: dict[str, int] = {}
    for gi, group in enumerate(groups):
        where = f"{path}: cells[{gi}]"
        if not isinstance(group, dict):
            raise InputError(f"{where}: expected a table, got {group!r:.60}")
        _check_fields(group, where, axes_allowed=True)
        axes = {}
        for key in _AXES:
            values = group.get(key, _OPTIONAL_AXES.get(key))
            if not isinstance(values, list) or not values:
                raise InputError(f"{where}.{key}: expected a non-empty list, got {values!r}")
            axes[key] = values
        overrides = {k: v for k, v in group.items() if k not in _AXES}
        for ds in axes["datasets"]:
            for st in axes["strategies"]:
                for pr in axes["precisions"]:
                    for sd, be in itertools.product(axes["seeds"], axes["backends"]):
                        values = {**defaults, **overrides}
                        values.update(dataset=ds, strategy=st, precision=pr, seed=sd, backend=be)
                        cell = _make_cell(values, where)
                        if cell.cell_id in seen:
                            raise InputError(
                                f"{where}: cell {cell.cell_id!r} is already defined by "
                                f"cells[{seen[cell.cell_id]}]"
                            )
                        seen[cell.cell_id] = gi
                        cells.append(cell)
    return Matrix(
        profile=profile,
        path=path,
        description=description,
        tolerances=tolerances,
        cells=tuple(cells),
        raw=data,
        recording=recording,
    )


def _table(data: dict[str, Any], key: str, path: Path, *, required: bool) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        if required:
            raise InputError(f"{path}: missing [{key}] table")
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{path}: {key} must be a table, got {value!r:.60}")
    return value


def _recording(table: dict[str, Any], path: Path) -> BaselineRecording:
    known = {f.name for f in dataclasses.fields(BaselineRecording)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise InputError(f"{path}: baseline: unknown field(s) {unknown} (known: {sorted(known)})")
    limits = {"noise_seeds": (0, 50), "repeats": (1, 50)}
    for key, (low, high) in limits.items():
        v = table.get(key)
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high
        ):
            raise InputError(
                f"{path}: baseline.{key} must be an integer in [{low}, {high}], got {v!r}"
            )
    return BaselineRecording(**table)


def _tolerances(table: dict[str, Any], path: Path) -> Tolerances:
    want = ("accuracy_points", "throughput_relative")
    optional = ("ab_relative", "false_alarm_rate", "min_compared")
    unknown = sorted(set(table) - set(want) - set(optional))
    if unknown:
        known = [*want, *optional]
        raise InputError(f"{path}: tolerances: unknown field(s) {unknown} (known: {known})")
    vals = {}
    for key in (*want, *(k for k in optional if k in table)):
        v = table.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite(v) or v < 0:
            raise InputError(f"{path}: tolerances.{key} must be a number >= 0, got {v!r}")
        vals[key] = float(v)
    for key in ("throughput_relative", "ab_relative"):
        if vals.get(key, 0.0) >= 1:
            raise InputError(
                f"{path}: tolerances.{key} must be < 1 (a fraction), got {vals[key]!r}"
            )
    if "false_alarm_rate" in vals and not 0 < vals["false_alarm_rate"] < 0.5:
        raise InputError(
            f"{path}: tolerances.false_alarm_rate must be in (0, 0.5) (a probability per run), "
            f"got {vals['false_alarm_rate']!r}"
        )
    if vals.get("min_compared", 0.0) > 1:
        raise InputError(
            f"{path}: tolerances.min_compared must be a fraction in [0, 1], "
            f"got {vals['min_compared']!r}"
        )
    return Tolerances(**vals)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _check_fields(table: dict[str, Any], where: str, *, axes_allowed: bool) -> None:
    axis_fields = set(_AXES.values())
    for key, value in table.items():
        if axes_allowed and key in _AXES:
            continue
        if key in axis_fields:
            raise InputError(
                f"{where}: {key!r} is a matrix axis; give it as a list in a [[cells]] group "
                f"({key}s = [...])"
            )
        if key not in _FIELDS:
            known = ", ".join(sorted(set(_FIELDS) - axis_fields))
            raise InputError(f"{where}: unknown field {key!r} (known: {known})")
        ftype = str(_FIELDS[key].type)
        if value is None:
            continue
        kinds = _TYPES.get(ftype)
        if kinds is None:  # pragma: no cover - a new field type without a checker
            raise InputError(f"{where}.{key}: unsupported field type {ftype}")
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise InputError(f"{where}.{key}: expected {ftype}, got {value!r}")
        if float in kinds and not _finite(value):  # TOML has nan and inf; ints can overflow
            raise InputError(f"{where}.{key}: expected a finite number, got {value!r}")


def _make_cell(values: dict[str, Any], where: str) -> CellSpec:
    v = dict(values)
    for key in (
        "learning_rate",
        "alpha",
        "backbone_lr_factor",
        "bn_momentum",
        "reduce_lr_factor",
        "reduce_lr_min",
        "target_accuracy",
    ):
        if v.get(key) is not None:
            v[key] = float(v[key])
    cell = CellSpec(**v)
    where = f"{where} ({cell.cell_id})"

    def bad(fieldname: str, msg: str) -> InputError:
        return InputError(f"{where}.{fieldname}: {msg}, got {getattr(cell, fieldname)!r}")

    if not isinstance(cell.dataset, str) or not cell.dataset or "/" in cell.dataset:
        raise bad("dataset", "expected a dataset name without '/'")
    if cell.strategy not in STRATEGIES:
        raise bad("strategy", f"expected one of {list(STRATEGIES)}")
    if cell.precision not in PRECISIONS:
        raise bad("precision", f"expected one of {list(PRECISIONS)}")
    if cell.backend is not None and cell.backend not in backend_names():
        raise bad("backend", f"expected one of {list(backend_names())}")
    if isinstance(cell.seed, bool) or not isinstance(cell.seed, int) or cell.seed < 0:
        raise bad("seed", "expected an integer >= 0")
    if cell.augmentation not in AUGMENTATIONS:
        raise bad("augmentation", f"expected one of {list(AUGMENTATIONS)}")
    if cell.input not in INPUTS:
        raise bad("input", f"expected one of {list(INPUTS)}")
    if cell.image_size < 32:
        raise bad("image_size", "MobileNetV2 needs at least 32 px")
    if not 0 < cell.alpha <= 1.4:
        raise bad("alpha", "expected 0 < alpha <= 1.4")
    for name in (
        "batch_size",
        "epochs",
        "inference_batch",
        "inference_steps",
        "dry_run_steps",
        "dry_run_batch",
    ):
        if getattr(cell, name) < 1:
            raise bad(name, "expected an integer >= 1")
    for name in ("warmup_steps", "inference_warmup", "dense_units", "reduce_lr_patience"):
        if getattr(cell, name) < 0:
            raise bad(name, "expected an integer >= 0")
    _check_run_length(cell, bad)
    if isinstance(cell.repeats, bool) or not isinstance(cell.repeats, int) or cell.repeats < 1:
        raise bad("repeats", "expected an integer >= 1 (each repeat a fresh cell process)")
    if cell.learning_rate <= 0:
        raise bad("learning_rate", "expected a number > 0")
    if not 0 < cell.backbone_lr_factor <= 1:
        raise bad("backbone_lr_factor", "expected 0 < factor <= 1")
    if not 0 <= cell.bn_momentum < 1:
        raise bad("bn_momentum", "expected 0 <= momentum < 1")
    if not 0 < cell.reduce_lr_factor < 1:
        raise bad("reduce_lr_factor", "expected 0 < factor < 1")
    if cell.target_accuracy is not None and not 0 < cell.target_accuracy <= 1:
        raise bad("target_accuracy", "expected a fraction in (0, 1]")
    if cell.fine_tune_k < 0:
        raise bad("fine_tune_k", "expected an integer >= 0")
    if cell.strategy == "fine-tune" and not 0 < cell.fine_tune_k < BACKBONE_LAYERS:
        raise bad(
            "fine_tune_k",
            f"fine-tune freezes the first K of the backbone's {BACKBONE_LAYERS} layers "
            f"(MobileNetV2 without top, any alpha and size) and trains the rest: expected "
            f"1 <= fine_tune_k <= {BACKBONE_LAYERS - 1}",
        )
    if cell.strategy == "two-stage" and not 0 < cell.head_epochs < cell.epochs:
        raise bad("head_epochs", f"two-stage needs 0 < head_epochs < epochs ({cell.epochs})")
    if cell.steps_per_epoch is not None and cell.steps_per_epoch < 1:
        raise bad("steps_per_epoch", "expected an integer >= 1")
    if cell.input == "synthetic":  # the step count is the profile's: check the warm-up here
        why = warmup_problem(cell, cell.batch_size * (cell.steps_per_epoch or SYNTHETIC_STEPS))
        if why:
            raise bad("warmup_steps", why)
    if cell.input == "synthetic" and (cell.num_classes is None or cell.num_classes < 2):
        raise bad("num_classes", "input = 'synthetic' needs num_classes >= 2")
    if cell.input == "real" and cell.num_classes is not None:
        raise bad("num_classes", "only input = 'synthetic' takes num_classes (data has its own)")
    if cell.strategy == "scratch" and cell.weights != NO_WEIGHTS:
        # Scratch means random init: the weights field is recorded as "none" so the
        # config never claims a pretrained file the cell does not use.
        cell = dataclasses.replace(cell, weights=NO_WEIGHTS)
    if not cell.weights:
        raise bad("weights", f"expected a manifest weights name or {NO_WEIGHTS!r}")
    return cell


def _check_run_length(cell: CellSpec, bad: Any) -> None:
    """The counts that set how long a cell runs stay under :data:`MAX_EPOCHS` / ``MAX_STEPS``."""
    why = "a bound against typos: a cell is one process that cannot stop half-way and resume"
    if cell.epochs > MAX_EPOCHS:
        raise bad("epochs", f"expected at most {MAX_EPOCHS} ({why}; the reference trains 70)")
    steps = ("steps_per_epoch", "warmup_steps", "inference_steps", "inference_warmup")
    for name in (*steps, "dry_run_steps"):
        value = getattr(cell, name)
        if value is not None and value > MAX_STEPS:
            raise bad(name, f"expected at most {MAX_STEPS} ({why})")


def measured_steps(cell: CellSpec, train_images: int) -> tuple[int, str]:
    """(full-batch train steps of the stage whose throughput is reported, how they add up).

    The reported train throughput is the last stage's (two-stage: the unfrozen one); the
    first ``warmup_steps`` of each stage and an epoch's smaller last batch are not timed.
    """
    per_epoch = 1 if train_images <= cell.batch_size else train_images // cell.batch_size
    two_stage = cell.strategy == "two-stage"
    epochs = cell.epochs - cell.head_epochs if two_stage else cell.epochs
    stage = "its unfrozen stage" if two_stage else "it"
    how = (
        f"{stage} trains {epochs} epoch(s) × {per_epoch} full batch(es) of {cell.batch_size} "
        f"from {train_images} train images"
    )
    return epochs * per_epoch, how


def warmup_problem(cell: CellSpec, train_images: int) -> str | None:
    """Why ``cell``'s ``warmup_steps`` leave no train step to time (None: some are left)."""
    steps, how = measured_steps(cell, train_images)
    if cell.warmup_steps < steps:
        return None
    return (
        f"warmup_steps {cell.warmup_steps} leaves no train step to time: {how} = {steps} "
        f"step(s); expected warmup_steps < {steps} (or more epochs)"
    )


def default_profile() -> str:
    """``$BENCH_PROFILE`` or ``smoke``."""
    return os.environ.get(ENV_PROFILE) or DEFAULT_PROFILE
