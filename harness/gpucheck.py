"""The GPU check: ``python -m harness.gpucheck OUT_DIR`` (what ``scripts/gpu-check.sh`` runs).

For a machine with an NVIDIA GPU, JAX with CUDA and no TensorFlow. Within a time budget
(default 8 minutes) it runs, on JAX, through the ordinary CLI (``bench all``), each phase
into run folders under ``OUT_DIR/runs`` (each with its report):

1. ``warm-up``: the throughput matrices with one step per epoch, several cells at a time,
   to fill JAX's persistent compilation cache with the very shapes of phases 2 and 4
   (a cell then loads its executables instead of compiling them: seconds, not a minute);
2. ``throughput-xla``: ``benchmarks/gpu-throughput.toml`` (224 px, alpha 1.0, batch 128,
   every strategy at float32, mixed_float16 and mixed_bfloat16, XLA on), one cell at a
   time so nothing else shares the GPU while it is timed;
3. ``smoke``: ``benchmarks/smoke.toml`` with every group at float32 and mixed_bfloat16
   (derived into ``OUT_DIR/profiles``), several cells at a time (accuracy, not speed);
4. ``throughput-noxla``: ``benchmarks/gpu-throughput-noxla.toml`` (the same with
   ``jit_compile = false``), one cell at a time.

Then ``summary.json`` (kind ``transfer-bench.gpu-check``) and ``summary.md`` in
``OUT_DIR``: the device, train and inference images/s per strategy and precision, the
mixed-precision speed-up over float32, the coefficient of variation over repeats (train:
per-epoch images/s, the epochs being the repeats; inference: per call), XLA on against off
side by side, smoke accuracy per precision, and which phases ran out of budget. A phase
that would start with less than a minute left is recorded as not reached.

``--cpu-dry-run`` runs every phase on the CPU instead, with the matrices shrunk (32 px,
alpha 0.35, a couple of steps, ``bench all --dry-run``: precisions the CPU lacks run
anyway, to check their graphs) and a few cells per phase: what CI runs, so the script is
known to work before it meets a GPU. ``bench all --dry-run`` writes no report, so the dry
run renders each phase's reports itself (:func:`dry_run_reports`). Exit status: 0 all ran
and passed, 1 a cell failed or a phase did not finish within the budget, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import jsonio, paths, runfolder
from harness.analysis import crossbackend
from harness.errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK
from harness.results import CellResult

SUMMARY_KIND = "transfer-bench.gpu-check"
SUMMARY_SCHEMA = 1
BACKEND = "jax"
MIN_PHASE_SECONDS = 60.0
GOALS = {"mixed_speedup_min": 2.0, "cv_max": 0.02}
ANCHORS = [
    "NVIDIA EfficientNet-B0, TF2, AMP + XLA, A100: train 3,454 images/s, inference 9,730",
    "timm mobilenetv2_100, AMP: train 1,832 images/s on an RTX 3090 at batch 512, "
    "inference 10,810 on an RTX 4090",
]
# --cpu-dry-run: the matrices shrunk to what two CPU cores run in a few minutes.
DRY_OVERRIDES: dict[str, Any] = {
    "image_size": 32,
    "alpha": 0.35,
    "batch_size": 8,
    "inference_batch": 8,
    "steps_per_epoch": 2,
    "epochs": 2,
    "head_epochs": 1,
    "warmup_steps": 1,
    "inference_steps": 2,
    "inference_warmup": 1,
}
WARMUP_OVERRIDES: dict[str, Any] = {"steps_per_epoch": 1, "inference_steps": 1, "warmup_steps": 0}


@dataclass(frozen=True)
class Phase:
    name: str
    profile: str  # benchmarks/<profile>.toml
    parallel: bool  # several cells at a time (never for a phase whose speed is the result)
    dry_only: str  # --cpu-dry-run: the cells it runs (bench --only patterns)
    overrides: dict[str, Any] = field(default_factory=dict)  # into [defaults]
    group_overrides: dict[str, Any] = field(default_factory=dict)  # into every [[cells]]


PHASES: tuple[Phase, ...] = (
    Phase(
        "warm-up", "gpu-throughput", True,
        "*/full-fine-tune-random/float32/*,*/two-stage-random/float32/*", WARMUP_OVERRIDES,
    ),
    Phase(
        "throughput-xla", "gpu-throughput", False,
        "*/full-fine-tune-random/float32/*,*/full-fine-tune-random/mixed_bfloat16/*,"
        "*/two-stage-random/float32/*",
    ),
    Phase(
        "smoke", "smoke", True, "synth-few/fine-tune/*",
        group_overrides={"precisions": ["float32", "mixed_bfloat16"]},
    ),
    Phase("throughput-noxla", "gpu-throughput-noxla", False, "*/full-fine-tune-random/float32/*"),
)  # fmt: skip


# --- profiles ---------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def dump_profile(data: dict[str, Any]) -> str:
    """A matrix (tables of scalars and lists, ``[[cells]]`` groups) as TOML text."""
    lines: list[str] = []
    for key in ("profile", "tolerances", "defaults"):
        if key in data:
            lines.append(f"[{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in data[key].items()]
            lines.append("")
    for group in data.get("cells", []):
        lines.append("[[cells]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in group.items()]
        lines.append("")
    return "\n".join(lines)


def derived_profile(
    name: str,
    out_dir: Path,
    suffix: str,
    overrides: dict[str, Any],
    group_overrides: dict[str, Any] | None = None,
) -> Path:
    """``benchmarks/<name>.toml`` with ``overrides`` in its defaults and ``group_overrides``
    in each ``[[cells]]`` group, written to ``out_dir`` (same profile name: its baseline)."""
    src = paths.benchmarks_dir() / f"{name}.toml"
    data = tomllib.loads(src.read_text())
    data.setdefault("defaults", {}).update(overrides)
    for group in data.get("cells", []):
        group.update(group_overrides or {})
    path = out_dir / suffix / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    note = f"# {src.name} with {overrides} {group_overrides or ''} (harness.gpucheck)\n"
    path.write_text(note + dump_profile(data))
    return path


def _exact(cell_id: str) -> str:
    """An ``--only`` pattern matching ``cell_id`` and nothing else (a glob, so not a substring)."""
    return f"{cell_id[:-1]}[{cell_id[-1]}]"


# --- running the phases ---------------------------------------------------------------------


@dataclass
class PhaseOutcome:
    name: str
    profile: str
    status: str  # "complete", "partial" (out of budget or a cell failed), "not reached"
    run_dirs: list[str] = field(default_factory=list)
    cells: int = 0
    wall_seconds: float = 0.0
    note: str = ""


def _bench(args: list[str], timeout: float, log: Path) -> int | None:
    """``bench ARGS`` as a subprocess in its own session; None when it ran out of time."""
    cmd = [sys.executable, "-m", "harness.cli", *args]
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return None


def run_phase(
    phase: Phase, out: Path, *, deadline: float, dry: bool, jobs: int, log: Path
) -> PhaseOutcome:
    from harness.matrix import load_matrix

    left = deadline - time.monotonic()
    if left < (5.0 if dry else MIN_PHASE_SECONDS):
        return PhaseOutcome(phase.name, phase.profile, "not reached", note="budget spent")
    overrides = {**(DRY_OVERRIDES if dry else {}), **phase.overrides}
    profile = (
        str(derived_profile(
            phase.profile, out / "profiles", phase.name, overrides, phase.group_overrides
        ))
        if overrides or phase.group_overrides
        else phase.profile
    )  # fmt: skip
    matrix = load_matrix(profile)
    cells = matrix.select(phase.dry_only if dry else None)
    groups = [[c.cell_id for c in cells[k::jobs]] for k in range(jobs)] if phase.parallel else []
    groups = [g for g in groups if g] or [[c.cell_id for c in cells]]
    common = ["--runs-dir", str(out / "runs"), "--backend", BACKEND]
    if dry:
        common.append("--dry-run")
    t0 = time.monotonic()
    procs = []
    for k, ids in enumerate(groups):
        run_id = phase.name if len(groups) == 1 else f"{phase.name}-{k + 1}"
        only = ",".join(_exact(i) for i in ids)
        args = ["all", "--profile", profile, "--run-id", run_id, "--only", only, *common]
        procs.append((run_id, args))
    codes: list[int | None] = []
    if len(procs) == 1:
        codes.append(_bench(procs[0][1], deadline - time.monotonic(), log))
    else:  # several `bench all` at once, each its own run folder
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(procs)) as pool:
            futures = [
                pool.submit(_bench, a, deadline - time.monotonic(), log.with_suffix(f".{r}.log"))
                for r, a in procs
            ]
            codes = [f.result() for f in futures]
    run_dirs = [str(out / "runs" / r) for r, _ in procs]
    outcome = PhaseOutcome(
        phase.name, profile, "complete", run_dirs, len(cells), time.monotonic() - t0
    )
    if any(c is None for c in codes):
        outcome.status, outcome.note = "partial", "stopped at the end of the budget"
    elif any(c != 0 for c in codes):
        outcome.status, outcome.note = "partial", f"bench exit codes {codes}"
    if dry:
        problem = dry_run_reports(run_dirs)
        if problem:
            outcome.status = "partial"
            outcome.note = f"{outcome.note}; {problem}".strip("; ")
    return outcome


def dry_run_reports(run_dirs: list[str]) -> str | None:
    """Write the report of each run folder of a ``--cpu-dry-run`` phase; returns what failed.

    ``bench all --dry-run`` stops before the end-of-run pipeline (a baseline comparison of
    stand-in data would mean nothing), so its run folders have no report. On a GPU every
    phase's ``bench all`` writes one; the dry run writes them here, without a comparison,
    so that the reports are known to render before the check first meets a GPU.
    """
    from harness.analysis import report

    for d in run_dirs:
        if not runfolder.is_run(Path(d)):
            continue  # the phase recorded nothing there (its note says why)
        try:
            report.write_report(Path(d))
        except Exception as exc:  # recorded in the phase, not a crash of the whole check
            return f"report of {Path(d).name} failed: {type(exc).__name__}: {exc}"[:300]
    return None


# --- the summary ----------------------------------------------------------------------------


def _cv(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean > 0 else None


def epoch_rates(cell: CellResult) -> list[float]:
    """Train images/s per epoch of the measured (last) stage: the repeats."""
    tp = cell.train_throughput
    eff = (cell.config or {}).get("effective") or {}
    if tp is None or not tp.step_series or not eff.get("train_examples"):
        return []
    per_epoch = max(1, int(eff["train_examples"]) // tp.batch_size)
    chunks, series = [], list(tp.step_series)
    first = max(per_epoch - tp.warmup_steps, 0)
    sizes = ([first] if first else []) + [per_epoch] * len(series)
    for size in sizes:
        if not series:
            break
        chunk, series = series[:size], series[size:]
        chunks.append(tp.batch_size / statistics.median(chunk))
    return chunks


def throughput_rows(cells: list[CellResult]) -> list[dict[str, Any]]:
    """Per strategy × precision: images/s, CV over repeats, speed-up over float32."""
    ok = [c for c in cells if c.ok and c.train_throughput is not None]
    by = {(c.strategy, c.precision): c for c in ok}
    rows = []
    for c in sorted(ok, key=lambda c: (c.strategy, c.precision)):
        ref = by.get((c.strategy, "float32"))
        inf = c.inference_throughput
        row: dict[str, Any] = {
            "cell": c.cell_id,
            "strategy": c.strategy,
            "precision": c.precision,
            "jit_compile": (c.extra.get("backend") or {}).get("jit_compile"),
            "batch": c.train_throughput.batch_size,  # type: ignore[union-attr]
            "train_images_per_s": c.train_throughput.images_per_s,  # type: ignore[union-attr]
            "train_cv": _cv(epoch_rates(c)),
            "train_repeats": len(epoch_rates(c)),
            "inference_images_per_s": inf.images_per_s if inf else None,
            "inference_cv": _cv([inf.batch_size / s for s in inf.step_series]) if inf else None,
            "compile_overhead_s": (c.extra.get("compile") or {}).get("overhead_s"),
            "peak_memory_bytes": c.peak_memory_bytes,
            "peak_memory_kind": c.peak_memory_kind,
        }
        if ref is not None and c.precision != "float32":
            r_inf = ref.inference_throughput
            row["speedup_over_float32"] = {
                "train": row["train_images_per_s"] / ref.train_throughput.images_per_s,  # type: ignore[union-attr]
                "inference": (row["inference_images_per_s"] / r_inf.images_per_s)
                if inf and r_inf
                else None,
            }
        rows.append(row)
    return rows


def _cells(outcome: PhaseOutcome) -> list[CellResult]:
    found = []
    for d in outcome.run_dirs:
        if (Path(d) / runfolder.CELLS).is_dir():
            found += runfolder.read_cells(Path(d))
    return found


def summarize(
    outcomes: list[PhaseOutcome], *, dry: bool, budget_s: float, wall_s: float
) -> dict[str, Any]:
    from harness import env

    phase = {o.name: o for o in outcomes}
    all_cells = [c for o in outcomes if o.name != "warm-up" for c in _cells(o)]
    runtime = next(((c.extra.get("backend") or {}).get("runtime") for c in all_cells if c.ok), None)
    xla = _cells(phase["throughput-xla"]) if "throughput-xla" in phase else []
    noxla = _cells(phase["throughput-noxla"]) if "throughput-noxla" in phase else []
    smoke = _cells(phase["smoke"]) if "smoke" in phase else []
    thr = throughput_rows(xla)
    speedups = [r["speedup_over_float32"]["train"] for r in thr if "speedup_over_float32" in r]
    cvs = [r["train_cv"] for r in thr if r["train_cv"] is not None]
    side = crossbackend.between_runs(noxla, xla, run_id="XLA off", base_run_id="XLA on")
    return {
        "mode": "cpu-dry-run" if dry else "gpu",
        "backend": BACKEND,
        "device": {"gpu": env.gpu_info(), "backend_runtime": runtime},
        "budget_seconds": budget_s,
        "wall_seconds": wall_s,
        "phases": [o.__dict__ for o in outcomes],
        "throughput_xla": thr,
        "throughput_noxla": throughput_rows(noxla),
        "xla_on_vs_off": [p.to_dict() for p in side],
        "smoke": [
            {
                "cell": c.cell_id,
                "precision": c.precision,
                "status": c.status,
                "best_val_accuracy": c.best_val_accuracy,
                "test_accuracy": c.test_accuracy,
                "error": c.error,
            }
            for c in smoke
        ],
        "goals": {
            **GOALS,
            "mixed_speedup_train_min_seen": min(speedups) if speedups else None,
            "train_cv_max_seen": max(cvs) if cvs else None,
        },
        "anchors": ANCHORS,
        "failed_cells": sorted(c.cell_id for c in all_cells if c.status == "failed"),
        "note": (
            "CPU dry run: shrunk matrices (32 px, alpha 0.35), bench --dry-run (precisions "
            "the CPU lacks are run anyway to check their graphs); the figures mean nothing"
            if dry
            else "train images/s: median step, warm-up excluded; CV over per-epoch images/s "
            "(train) or per call (inference)"
        ),
    }


def _f(v: Any, fmt: str) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def render_markdown(summary: dict[str, Any]) -> str:
    from tabulate import tabulate

    gpu = (summary["device"] or {}).get("gpu") or {}
    rt = (summary["device"] or {}).get("backend_runtime") or {}
    lines = [
        f"# GPU check ({summary['mode']})",
        "",
        f"Device: {gpu.get('name') or rt.get('device_kind') or 'unknown'} "
        f"(driver {gpu.get('driver')}); {BACKEND} {rt.get('jax')} on {rt.get('platform')} "
        f"{rt.get('platform_version') or ''}. Wall {summary['wall_seconds']:.0f} s of a "
        f"{summary['budget_seconds']:.0f} s budget.",
        "",
        tabulate(
            [
                [p["name"], p["status"], p["cells"], f"{p['wall_seconds']:.0f}", p["note"]]
                for p in summary["phases"]
            ],
            headers=["phase", "status", "cells", "wall s", "note"],
            tablefmt="github",
            disable_numparse=True,
        ),
        "",
        "## Throughput, XLA on",
        "",
    ]

    def thr_table(rows: list[dict[str, Any]]) -> str:
        return tabulate(
            [
                [
                    r["strategy"], r["precision"], r["batch"],
                    _f(r["train_images_per_s"], ",.0f"), _f(r["train_cv"], ".1%"),
                    _f(r["inference_images_per_s"], ",.0f"), _f(r["inference_cv"], ".1%"),
                    _f((r.get("speedup_over_float32") or {}).get("train"), ".2f"),
                    _f((r.get("speedup_over_float32") or {}).get("inference"), ".2f"),
                ]
                for r in rows
            ],
            headers=[
                "strategy", "precision", "batch", "train img/s", "train CV",
                "inference img/s", "inference CV", "train speed-up vs fp32",
                "inference speed-up vs fp32",
            ],
            tablefmt="github",
            disable_numparse=True,
        )  # fmt: skip

    lines += [thr_table(summary["throughput_xla"]), "", "## Throughput, XLA off", ""]
    lines += [thr_table(summary["throughput_noxla"]), ""]
    goals = summary["goals"]
    lines += [
        f"Goals: mixed-precision train speed-up >= {goals['mixed_speedup_min']}x (lowest seen: "
        f"{_f(goals['mixed_speedup_train_min_seen'], '.2f')}); CV <= {goals['cv_max']:.0%} "
        f"(highest seen: {_f(goals['train_cv_max_seen'], '.1%')}).",
        "",
        "Anchors: " + "; ".join(summary["anchors"]) + ".",
        "",
        "## Smoke",
        "",
        tabulate(
            [
                [
                    s["cell"],
                    s["status"],
                    _f(s["best_val_accuracy"], ".3f"),
                    _f(s["test_accuracy"], ".3f"),
                ]
                for s in summary["smoke"]
            ],
            headers=["cell", "status", "best val acc", "test acc"],
            tablefmt="github",
            disable_numparse=True,
        ),
        "",
        summary["note"],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.gpucheck", description=__doc__)
    ap.add_argument("out_dir", type=Path, help="where run folders and the summary go")
    ap.add_argument("--cpu-dry-run", action="store_true", help="shrunk, on the CPU (CI)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget (480)")
    ap.add_argument("--jobs", type=int, default=None, help="cells at a time in parallel phases")
    args = ap.parse_args(argv)
    if args.budget_s <= 0 or (args.jobs is not None and args.jobs < 1):
        print("gpucheck: --budget-s must be > 0 and --jobs >= 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs = args.jobs or (2 if args.cpu_dry_run else max(1, min(6, (os.cpu_count() or 2) // 2)))
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    log = out / "gpu-check.log"
    outcomes = []
    for phase in PHASES:
        print(f"gpu-check: {phase.name} ({phase.profile})", flush=True)
        o = run_phase(phase, out, deadline=deadline, dry=args.cpu_dry_run, jobs=jobs, log=log)
        print(f"gpu-check: {phase.name}: {o.status} in {o.wall_seconds:.0f}s {o.note}", flush=True)
        outcomes.append(o)
    summary = summarize(
        outcomes, dry=args.cpu_dry_run, budget_s=args.budget_s, wall_s=time.monotonic() - t0
    )
    jsonio.write_json(out / "summary.json", summary, kind=SUMMARY_KIND, schema=SUMMARY_SCHEMA)
    jsonio.atomic_write_bytes(out / "summary.md", render_markdown(summary).encode())
    print(f"gpu-check: summary -> {out / 'summary.json'}, {out / 'summary.md'}")
    incomplete = [o.name for o in outcomes if o.status != "complete"]
    if summary["failed_cells"] or incomplete:
        print(
            f"gpu-check: not all passed: failed cells {summary['failed_cells']}, "
            f"phases not complete {incomplete}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
