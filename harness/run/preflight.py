"""The pre-flight of a run: every chosen cell's inputs checked, then prepared once, in the
parent process, before any cell starts.

:func:`run` (called at the start of :func:`harness.run.orchestrate.run_matrix`) checks, for
every cell, without importing a framework:

- the cell's backend (and Keras) is installed (``importlib.util.find_spec``);
- its dataset and weights names are in the manifest (a typo is an input error, always);
- its precision runs on this device (:mod:`harness.run.hostdevices`; a cell with
  ``skip_if_unsupported`` is recorded as skipped instead);
- its dataset is prepared, or fetched, or fetchable (an https source), with the splits a
  cell needs, and pinned unless ``--allow-unpinned``; its weights are pinned and present
  or fetchable, and a present weights file matches its pinned size and hash;
- a prepared cache is what was written (:func:`harness.datasets.cache.verify_cache`:
  headers, lengths, labels in range, at least two classes, every class in every split,
  and its digest, recomputed only when a file changed since the last verification);
- its ``warmup_steps`` leave train steps to time, given the train split's size;
- there is free disk for the caches still to build.

:func:`check_devices` does the same for ``--devices``: a GPU named there must be visible
(called by ``bench all|run`` before the run starts).

A problem is one line; the same problem of several cells is one line naming them. With
any problem the run stops before anything starts (exit 2, no run folder), unless
``skip_unavailable``: then cells whose problem is about this machine or its data
(backend, precision, data not fetched, unpinned) are recorded as skipped with the
reason, and the rest run. Unknown names and malformed datasets are never skippable.

Then, unless a dry run (which uses stand-ins and needs no data), each (dataset, image
size) is fetched if need be and prepared ONCE, here; cells only open the caches
(:func:`harness.datasets.prepare.require_prepared`). Cells on synthetic input need no
dataset at all. :func:`profile_needs` says what a set of cells needs, for
``bench data fetch|prepare --profile``.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from harness import paths
from harness.errors import InputError
from harness.manifest import (
    DatasetEntry,
    DerivedSource,
    FileSource,
    HttpsSource,
    LocalSource,
    Manifest,
    SyntheticSource,
    load_manifest,
)
from harness.matrix import CellSpec, warmup_problem

DISK_MARGIN = 1.05  # caches are estimated; ask for 5 % more free space than the estimate


class PreflightError(InputError):
    """One or more cells cannot run here; the message has one line per problem."""


@dataclass(frozen=True)
class Problem:
    """One reason one or more cells cannot run; ``skippable`` by ``--skip-unavailable``."""

    what: str
    skippable: bool


@dataclass(frozen=True)
class Needs:
    """What a set of cells needs: dataset → image sizes, and weights names."""

    datasets: dict[str, set[int]] = field(default_factory=dict)
    weights: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Outcome:
    """What :func:`run` decided: cells to record as skipped (id → reason), what it prepared."""

    skipped: dict[str, str]
    prepared: tuple[str, ...]


def profile_needs(cells: Iterable[CellSpec]) -> Needs:
    """Datasets (with the image sizes they are used at) and weights that ``cells`` read."""
    needs = Needs()
    for cell in cells:
        if cell.input == "real":
            needs.datasets.setdefault(cell.dataset, set()).add(cell.image_size)
        if cell.pretrained:
            needs.weights.add(cell.weights)
    return needs


def root_of(entry: DatasetEntry, manifest: Manifest) -> DatasetEntry:
    """The dataset whose files a (possibly derived) dataset is read from."""
    seen = 0
    while isinstance(entry.source, DerivedSource) and seen < 100:
        entry = manifest.dataset(entry.source.parent)
        seen += 1
    return entry


# --- the checks --------------------------------------------------------------------------


def _backend_problem(name: str) -> Problem | None:
    missing = [m for m in (name, "keras") if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    extra = {"tensorflow": "tf-cpu (or tf-cuda)", "jax": "jax", "torch": "torch"}.get(name, name)
    return Problem(
        f"the {name} backend cannot run here: {', '.join(missing)} not installed in "
        f"{sys.prefix} (install the extra: pip install 'transfer-bench[{extra}]', or pick "
        "another with --backend)",
        skippable=True,
    )


def _dataset_problem(
    entry: DatasetEntry, size: int, manifest: Manifest, allow_unpinned: bool
) -> Problem | None:
    """Why ``entry`` cannot be ready at ``size`` px (None: prepared, or preparable here)."""
    from harness.datasets import archives, cache
    from harness.datasets.prepare import cached, check_pin, check_runner_splits
    from harness.datasets.prepare import check_source_pinned as pinned

    try:
        check_runner_splits(entry)
    except InputError as exc:
        return Problem(exc.message, skippable=False)
    meta = cached(entry, size)
    if meta is not None:
        try:
            cache.verify_cache(entry.name, size)
            check_pin(entry, size, str(meta["digest"]))
        except InputError as exc:
            return Problem(exc.message, skippable=False)
        return None
    try:
        pinned(entry, manifest, allow_unpinned=allow_unpinned)
    except InputError as exc:
        return Problem(exc.message, skippable=True)
    root = root_of(entry, manifest)
    source = root.source
    if isinstance(source, SyntheticSource):
        return None
    assert isinstance(source, HttpsSource | LocalSource)
    state = archives.fetch_state(root)
    via = f" (needed by {entry.name!r})" if root is not entry else ""
    if state == "refused":
        return Problem(
            f"dataset {root.name!r}{via}: its archive's extraction was refused; see `bench "
            f"data fetch {root.name}`",
            skippable=True,
        )
    if isinstance(source, LocalSource) and state is None:
        return Problem(
            f"dataset {root.name!r}{via} comes from a local archive that is not here: run "
            f"`bench data fetch {root.name} --from PATH/{source.filename}`",
            skippable=True,
        )
    return None  # fetched, or fetched from its https source by the preparation below


def _weights_problem(name: str, manifest: Manifest, allow_unpinned: bool) -> Problem | None:
    from harness.datasets.weights import check_weights, weights_path

    entry = manifest.weights[name]
    path = weights_path(entry)
    if not entry.sha256 and not allow_unpinned:
        return Problem(
            f"weights {name!r} are unpinned (no sha256 in {manifest.path}): run `bench data "
            f"pin {name}` after checking the file, or pass --allow-unpinned",
            skippable=True,
        )
    if isinstance(entry.source, FileSource) and not path.is_file():
        return Problem(
            f"weights {name!r}: {path} is missing (manifest weights.{name}.source.path)",
            skippable=True,
        )
    if path.is_file():  # an https file not fetched yet is verified as it is downloaded
        try:
            check_weights(entry, allow_unpinned=allow_unpinned, manifest_path=manifest.path)
        except InputError as exc:
            return Problem(exc.message, skippable=False)
    return None


def _cache_bytes(entry: DatasetEntry, size: int) -> int:
    images = sum(entry.splits.values())
    return images * (size * size * 3 + 4) + (1 << 20)


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _disk_problem(todo: list[tuple[DatasetEntry, int]], manifest: Manifest) -> Problem | None:
    """Free space for the caches still to build (and archives still to download)."""
    from harness.datasets import archives

    need = sum(_cache_bytes(e, s) for e, s in todo)
    roots = {root_of(e, manifest).name: root_of(e, manifest) for e, _ in todo}
    for root in roots.values():
        source = root.source
        if isinstance(source, HttpsSource) and archives.fetch_state(root) is None:
            need += 2 * (source.size or 0)  # the download and its extraction
    if not need:
        return None
    folder = _existing(paths.data_dir())
    free = shutil.disk_usage(folder).free
    if need * DISK_MARGIN <= free:
        return None
    gib = need * DISK_MARGIN / 2**30
    return Problem(
        f"not enough free disk for the data still to prepare: about {gib:.1f} GiB needed in "
        f"{folder}, {free / 2**30:.1f} GiB free (free some space, or point BENCH_DATA_DIR "
        "at a larger disk)",
        skippable=False,
    )


def _cell_problems(
    cell: CellSpec,
    manifest: Manifest,
    *,
    backend: str,
    dry_run: bool,
    allow_unpinned: bool,
    memo: dict[tuple, Problem | None],
) -> tuple[list[Problem], str | None]:
    """(problems, reason to skip regardless of --skip-unavailable) for one cell."""
    from harness.run import hostdevices

    problems: list[Problem] = []

    def once(key: tuple, fn: Callable[[], Problem | None]) -> None:
        if key not in memo:
            memo[key] = fn()
        if memo[key] is not None:
            problems.append(memo[key])  # type: ignore[arg-type]

    once(("backend", backend), lambda: _backend_problem(backend))
    real = cell.input == "real"
    if real and cell.dataset not in manifest.datasets:
        known = ", ".join(sorted(manifest.datasets)) or "none"
        problems.append(
            Problem(
                f"unknown dataset {cell.dataset!r} (not in {manifest.path}; known: {known})",
                skippable=False,
            )
        )
    if cell.pretrained and cell.weights not in manifest.weights:
        known = ", ".join(sorted(manifest.weights)) or "none"
        problems.append(
            Problem(
                f"unknown weights {cell.weights!r} (not in {manifest.path}; known: {known})",
                skippable=False,
            )
        )
    if dry_run or any(not p.skippable for p in problems):
        return problems, None
    skip_reason = None
    key = ("precision", cell.precision, backend)
    if key not in memo:
        why = hostdevices.precision_problem(cell.precision, backend)
        memo[key] = Problem(why, skippable=True) if why else None
    precision = memo[key]
    if precision is not None:
        if cell.skip_if_unsupported:
            skip_reason = precision.what
        else:
            problems.append(precision)
    if real:
        entry = manifest.datasets[cell.dataset]
        once(
            ("dataset", cell.dataset, cell.image_size),
            lambda: _dataset_problem(entry, cell.image_size, manifest, allow_unpinned),
        )
        if "train" in entry.splits:
            why = warmup_problem(cell, entry.splits["train"])
            if why:
                problems.append(Problem(f"dataset {cell.dataset!r}: {why}", skippable=False))
    if cell.pretrained:
        once(
            ("weights", cell.weights),
            lambda: _weights_problem(cell.weights, manifest, allow_unpinned),
        )
    return problems, skip_reason


def _line(problem: Problem, cells: list[str]) -> str:
    if len(cells) == 1:
        who = f"cell {cells[0]}"
    else:
        more = f" and {len(cells) - 2} more" if len(cells) > 2 else ""
        who = f"{len(cells)} cells ({', '.join(cells[:2])}{more})"
    return f"pre-flight: {who}: {problem.what}"


def _prepare_all(
    todo: list[tuple[DatasetEntry, int]],
    manifest: Manifest,
    *,
    allow_unpinned: bool,
    say: Callable[[str], None],
) -> tuple[list[str], dict[str, str]]:
    """Fetch (https) and prepare each (dataset, size) once; (lines, dataset → failure)."""
    from harness.datasets import archives, cache
    from harness.datasets.prepare import prepare

    done: list[str] = []
    failed: dict[str, str] = {}
    for entry, size in todo:
        if entry.name in failed:
            continue
        try:
            root = root_of(entry, manifest)
            if isinstance(root.source, HttpsSource) and archives.fetch_state(root) is None:
                say(f"pre-flight: fetching {root.name} ({root.source.url})")
                archives.fetch_dataset(root, allow_unpinned=allow_unpinned)
            say(f"pre-flight: preparing {entry.name} at {size} px")
            prepare(entry.name, size, allow_unpinned=allow_unpinned)
        except InputError as exc:
            failed[entry.name] = f"preparing dataset {entry.name!r} at {size} px: {exc.message}"
            continue
        except OSError as exc:  # a read-only data folder (a container), a full disk
            failed[entry.name] = (
                f"preparing dataset {entry.name!r} at {size} px: cannot write under "
                f"{paths.data_dir()}: {exc.strerror or exc}; prepare it where the data folder "
                f"is writable: `bench data prepare {entry.name} --image-size {size}`"
            )
            continue
        try:  # just digested: this checks its labels (every class in every split)
            cache.verify_cache(entry.name, size)
        except InputError as exc:
            failed[entry.name] = exc.message
            continue
        done.append(f"{entry.name}@{size}")
    return done, failed


def _fetch_weights(
    names: Iterable[str], manifest: Manifest, allow_unpinned: bool, say: Callable[[str], None]
) -> dict[str, str]:
    """Fetch missing https weights; weights name → failure."""
    from harness.datasets import archives
    from harness.datasets.weights import weights_path

    failed = {}
    for name in sorted(names):
        entry = manifest.weights[name]
        if isinstance(entry.source, HttpsSource) and not weights_path(entry).is_file():
            try:
                say(f"pre-flight: fetching weights {name} ({entry.source.url})")
                archives.fetch_file(entry, allow_unpinned=allow_unpinned)
            except InputError as exc:
                failed[name] = f"fetching weights {name!r}: {exc.message}"
            except OSError as exc:
                failed[name] = f"fetching weights {name!r}: {exc.strerror or exc}"
    return failed


def check_devices(devices: list[str] | None, backend: str | None = None) -> None:
    """Refuse ``--devices`` that name GPUs a cell cannot use here (PreflightError, one line):
    none visible (a CPU-only machine: the cells would run on the CPU under a GPU's name), a
    CPU-only build of the run's backend, or an index that is not among the visible GPUs."""
    if not devices:
        return
    from harness import backend as backend_mod
    from harness.executors.local import visible_gpus
    from harness.run import hostdevices

    spec = ",".join(devices)
    if not hostdevices.nvidia_gpus():
        raise PreflightError(
            f"pre-flight: --devices {spec!r}: no GPU is visible here (nvidia-smi lists none, or "
            "CUDA_VISIBLE_DEVICES hides them), so its cells would run on the CPU under a GPU's "
            "name; use --jobs N on a CPU"
        )
    name = backend or backend_mod.configured_backend()
    if not hostdevices.backend_uses_gpus(name):
        raise PreflightError(
            f"pre-flight: --devices {spec!r}: the installed {name} is a CPU-only build, so its "
            "cells would run on the CPU under a GPU's name; install its CUDA build, or use "
            "--jobs N"
        )
    visible = visible_gpus()
    hidden = [d for d in devices if d.isdigit() and d not in visible]
    if hidden:
        raise PreflightError(
            f"pre-flight: --devices {spec!r}: GPU {', '.join(hidden)} is not visible here "
            f"(visible: {', '.join(visible) or 'none'}); name visible GPUs, or 'all'"
        )


def run(
    cells: Iterable[CellSpec],
    *,
    backend: str | None = None,
    dry_run: bool = False,
    allow_unpinned: bool = False,
    skip_unavailable: bool = False,
    say: Callable[[str], None] | None = None,
) -> Outcome:
    """Check every cell, then prepare what they need (module doc). Raises PreflightError."""
    from harness import backend as backend_mod

    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    cells = list(cells)
    manifest = load_manifest()
    memo: dict[tuple, Problem | None] = {}
    by_problem: dict[Problem, list[str]] = {}
    skipped: dict[str, str] = {}
    for cell in cells:
        name = getattr(cell, "backend", None) or backend or backend_mod.configured_backend()
        problems, skip_reason = _cell_problems(
            cell,
            manifest,
            backend=name,
            dry_run=dry_run,
            allow_unpinned=allow_unpinned,
            memo=memo,
        )
        for p in problems:
            by_problem.setdefault(p, []).append(cell.cell_id)
        if skip_reason and not problems:
            skipped[cell.cell_id] = skip_reason
    runnable = [c for c in cells if c.cell_id not in skipped]
    todo: list[tuple[DatasetEntry, int]] = []
    if not dry_run:
        bad_cells = {cid for ids in by_problem.values() for cid in ids}
        needs = profile_needs(c for c in runnable if c.cell_id not in bad_cells)
        for name, sizes in needs.datasets.items():
            entry = manifest.datasets[name]
            from harness.datasets.prepare import cached

            todo += [(entry, s) for s in sorted(sizes) if cached(entry, s) is None]
        disk = _disk_problem(todo, manifest)
        if disk is not None:
            by_problem.setdefault(disk, []).extend(c.cell_id for c in runnable)
    fatal = [(p, ids) for p, ids in by_problem.items() if not (p.skippable and skip_unavailable)]
    if fatal:
        lines = [_line(p, ids) for p, ids in fatal]
        raise PreflightError("\n".join(lines))
    for p, ids in by_problem.items():
        for cid in ids:
            skipped.setdefault(cid, f"unavailable here (pre-flight): {p.what}")
    if dry_run:
        return Outcome(skipped, ())
    runnable = [c for c in cells if c.cell_id not in skipped]
    needs = profile_needs(runnable)
    todo = [(e, s) for e, s in todo if e.name in needs.datasets]
    prepared, failed = _prepare_all(todo, manifest, allow_unpinned=allow_unpinned, say=say)
    failed_weights = _fetch_weights(needs.weights, manifest, allow_unpinned, say)
    if (failed or failed_weights) and not skip_unavailable:
        lines = [f"pre-flight: {why}" for why in [*failed.values(), *failed_weights.values()]]
        raise PreflightError("\n".join(lines))
    for cell in runnable:
        why = failed.get(cell.dataset) if cell.input == "real" else None
        why = why or (failed_weights.get(cell.weights) if cell.pretrained else None)
        if why:
            skipped[cell.cell_id] = f"unavailable here (pre-flight): {why}"
    return Outcome(skipped, tuple(prepared))
