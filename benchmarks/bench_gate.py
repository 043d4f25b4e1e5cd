"""What the gate catches: known regressions injected into the smoke matrix, and what it said.

    .venv/bin/python benchmarks/bench_gate.py [--json reports/gate/FILE.json] [--only a,b,c,d]

Run it on an idle machine with a committed smoke baseline for this machine's reproducibility
key (``bench baseline record``), from a clean checkout (the ``bench ab`` part compares
commits). Each part runs the real ``bench all --profile smoke`` into its own runs folder
(the gate's history of this key accumulates there as it would every night) and reads the
comparison the way a user does (``bench compare RUN --json``):

(a) a numerics bug (``Rescaling(1/255)`` instead of ``1/127.5, offset -1``, a one-line
    change, :mod:`harness.perf.inject`) on the baseline's own key: how many cells are
    ``changed`` (target: every cell);
(b) an accuracy drop of 3 points on another key: the smoke matrix run with another
    intra-op thread count (``TF_NUM_INTRAOP_THREADS=2``: another key, so the statistical
    tier judges it), once as it is (false alarms across keys) and once with 3 points taken
    off every cell's accuracies (a result-level injection: no code change gives exactly
    3 points) — which cells and which matrix-wide checks flag it;
(c) every training step 10 % and 25 % slower (busy-wait inside the step timer's bracket):
    the daily run's throughput verdicts (target: 25 % caught); and the 10 % commit against
    its parent with ``bench ab`` (target: caught within 16 rounds);
(d) identical code, ``--reruns`` times: regressions, improvements and changes (target: none).

The JSON summary (``--json``) holds every figure, the commands' verdicts and the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness import env as env_mod  # noqa: E402
from harness import runfolder  # noqa: E402
from harness.perf import inject  # noqa: E402

BENCH = [sys.executable, "-m", "harness.cli"]


def bench(
    args: list[str], *, cwd: Path = REPO, extra: dict[str, str] | None = None, timeout: float = 3600
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", **(extra or {})}
    for var in ("BENCH_PROFILE", "TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        if var not in (extra or {}):
            env.pop(var, None)
    env.setdefault("BENCH_HOME", str(REPO))
    return subprocess.run(
        [*BENCH, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def smoke_run(runs: Path, run_id: str, **kw: Any) -> dict[str, Any]:
    """``bench all --profile smoke`` into ``runs``, then its comparison as JSON."""
    t0 = time.perf_counter()
    proc = bench(["all", "--profile", "smoke", "--runs-dir", str(runs), "--run-id", run_id], **kw)
    wall = time.perf_counter() - t0
    if not (runs / run_id / "run.json").is_file():
        raise SystemExit(
            f"bench_gate: {run_id} produced no run (exit {proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return {**compare(runs / run_id), "bench_all_exit": proc.returncode, "wall_s": wall}


def compare(run_dir: Path, *more: str) -> dict[str, Any]:
    proc = bench(["compare", str(run_dir), "--json", *more])
    data = json.loads(proc.stdout)
    return {
        "run": run_dir.name,
        "exit": proc.returncode,
        "tier": data["tier"],
        "summary": data["summary"],
        "counts": {k: v for k, v in data["counts"].items() if v},
        "matrix_checks": [m["line"] for m in data["matrix_checks"]],
        "noise_models": data["noise_models"],
        "train_throughput": _flags(data, "train throughput"),
        "accuracy": {m: _flags(data, m) for m in ("best val accuracy", "test accuracy")},
    }


def _flags(data: dict[str, Any], metric: str) -> dict[str, Any]:
    """Per metric: the cells flagged each way and the median ratio/change."""
    out: dict[str, Any] = {"regression": [], "improvement": [], "changes": {}}
    for c in data["cells"]:
        for m in c["metrics"]:
            if m["metric"] != metric:
                continue
            out["changes"][c["cell_id"]] = round(m["change"], 4)
            if m["verdict"] in ("regression", "improvement") and m["gated"]:
                out[m["verdict"]].append(c["cell_id"])
    return out


def part_a(runs: Path, work: Path) -> dict[str, Any]:
    tree = inject.patched_copy(inject.NUMERICS_BUG, work / "numerics")
    got = smoke_run(runs, "a-numerics", cwd=tree, extra={"PYTHONPATH": str(tree)})
    changed = got["counts"].get("changed", 0)
    cells = sum(got["counts"].values())
    return {
        "injected": inject.NUMERICS_BUG.description,
        "cells": cells,
        "changed": changed,
        "target": "every cell changed",
        "met": changed == cells,
        **got,
    }


def part_b(runs: Path) -> dict[str, Any]:
    other = smoke_run(runs, "b-other-key", extra={"TF_NUM_INTRAOP_THREADS": "2"})
    src = runs / "b-other-key"
    shifted = runs / "b-other-key-minus3"
    if shifted.exists():
        shutil.rmtree(shifted)
    info = runfolder.read_run(src)
    runfolder.write_run(shifted, dataclasses.replace(info, run_id=shifted.name))
    for c in runfolder.read_cells(src):
        if c.ok:
            test = None if c.test_accuracy is None else max(0.0, c.test_accuracy - 0.03)
            c = dataclasses.replace(
                c,
                best_val_accuracy=max(0.0, (c.best_val_accuracy or 0.0) - 0.03),
                test_accuracy=test,
            )
        runfolder.write_cell(shifted, c)
    minus3 = compare(shifted)
    return {
        "injected": "another key (TF_NUM_INTRAOP_THREADS=2); then 3 points off every cell's "
        "best val and test accuracy (result-level)",
        "as_run": other,
        "minus_3_points": minus3,
    }


def part_c(runs: Path, work: Path, ab_rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for factor in (0.10, 0.25):
        inj = inject.slowdown(factor)
        tree = inject.patched_copy(inj, work / inj.name)
        got = smoke_run(runs, f"c-{inj.name}", cwd=tree, extra={"PYTHONPATH": str(tree)})
        flagged = len(got["train_throughput"]["regression"])
        out[inj.name] = {
            "injected": inj.description,
            "cells_flagged": flagged,
            "caught": got["exit"] == 1 and flagged > 0,
            **got,
        }
    out["ab_10"] = ab_slowdown(work, 0.10, ab_rounds)
    out["targets"] = "25 % caught by the daily run; 10 % by bench ab in <= 16 rounds"
    return out


def ab_slowdown(work: Path, factor: float, rounds: int) -> dict[str, Any]:
    """``bench ab`` of a commit that slows every step by ``factor`` against its parent."""
    clone = work / "ab-clone"
    if clone.exists():
        shutil.rmtree(clone)
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    inj = inject.slowdown(factor)
    module = clone / Path(*inj.module.split(".")).with_suffix(".py")
    module.write_text(module.read_text() + inj.append)
    git = ["git", "-C", str(clone), "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "commit", "-qam", f"injected: {inj.description}"], check=True)
    record = work / "ab-record.json"
    t0 = time.perf_counter()
    proc = bench(
        [
            "ab",
            "HEAD~1",
            "HEAD",
            "--profile",
            "smoke",
            "--only",
            "synth-few/full-fine-tune",
            "--rounds",
            str(rounds),
            "--json",
            "--record",
            str(record),
        ],
        cwd=clone,
        extra={"BENCH_HOME": str(clone)},
        timeout=7200,
    )
    data = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    verdicts = data.get("verdicts") or []
    return {
        "injected": inj.description,
        "rounds": rounds,
        "exit": proc.returncode,
        "wall_s": time.perf_counter() - t0,
        "verdicts": [
            {k: v.get(k) for k in ("cell_id", "verdict", "p_value", "ratio", "rounds")}
            for v in verdicts
        ],
        "caught": proc.returncode == 1,
        "stderr": proc.stderr[-500:],
    }


def part_d(runs: Path, reruns: int) -> dict[str, Any]:
    got = [smoke_run(runs, f"d-rerun-{k}") for k in range(1, reruns + 1)]
    totals = {
        v: sum(g["counts"].get(v, 0) for g in got)
        for v in ("regression", "improvement", "changed", "identical", "within noise")
    }
    return {
        "reruns": reruns,
        "totals": totals,
        "runs": got,
        "target": "0 regressions, 0 improvements, 0 changed",
        "met": totals["regression"] == totals["improvement"] == totals["changed"] == 0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the summary here")
    ap.add_argument("--only", default="a,b,c,d", help="parts to run (default a,b,c,d)")
    ap.add_argument("--reruns", type=int, default=5)
    ap.add_argument("--ab-rounds", type=int, default=16)
    ap.add_argument("--runs-dir", type=Path, help="default: a temporary folder")
    args = ap.parse_args()
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    work = Path(tempfile.mkdtemp(prefix="bench-gate-"))
    runs = args.runs_dir or work / "runs"
    fp = env_mod.fingerprint()
    summary: dict[str, Any] = {
        "kind": "transfer-bench.gate-power",
        "schema": 1,
        "machine": {
            "cpu": fp["cpu"],
            "python": platform.python_version(),
            "tensorflow": fp["tensorflow"],
            "git_commit": fp["git_commit"],
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    t0 = time.perf_counter()
    try:
        if "d" in parts:  # first: identical code builds this key's history, as nights do
            summary["d_identical_reruns"] = part_d(runs, args.reruns)
        if "c" in parts:  # next: timing, while the machine is as idle as for d
            summary["c_slowdowns"] = part_c(runs, work, args.ab_rounds)
        if "a" in parts:
            summary["a_numerics_bug"] = part_a(runs, work)
        if "b" in parts:
            summary["b_accuracy_drop_other_key"] = part_b(runs)
    finally:
        summary["wall_s"] = time.perf_counter() - t0
        text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text)
        print(text)
        shutil.rmtree(work / "ab-clone", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
