"""How small a slowdown ``bench ab`` catches, and with how many rounds, on this machine.

Input: the ``--json`` output of ``bench ab REV REV`` runs of *identical* code on both
sides (the same commit twice), e.g.::

    bench ab 8f1764d 8f1764d --profile /tmp/ab-tiny.toml --rounds 15 --json > id15.json
    .venv/bin/python benchmarks/bench_ab.py id15.json [more.json ...] [--runs 5]

For every number of rounds R, the recorded rounds are cut into disjoint groups of R
consecutive rounds; each group is one A/B run of R rounds. For each group and tolerance:

- **false alarms**: the verdict on the identical samples is a regression or an
  improvement (it should be neither);
- **caught**: with B's step times scaled by ``1 + s`` (a slowdown s on top of the real
  noise of identical code), the verdict is a regression.

The smallest slowdown caught in every group, at a tolerance with no false alarm in any
group, is the detection figure; the smallest R that reaches it is ``bench ab``'s default
``--rounds``. A real injected slowdown (a commit adding work to every train step) checks
the scaled figure: see tests/test_ab.py and the README.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from harness import ab

TOLERANCES = (0.02, 0.03, 0.05, 0.075, 0.10)
SLOWDOWNS = (0.02, 0.03, 0.05, 0.075, 0.10, 0.15, 0.20, 0.30)


def load_rounds(files: list[Path]) -> dict[str, tuple[list[list[float]], list[list[float]]]]:
    """Per cell: (A rounds, B rounds) of every file, in order."""
    cells: dict[str, tuple[list[list[float]], list[list[float]]]] = {}
    for path in files:
        data = json.loads(path.read_text())
        if data.get("a", {}).get("commit") != data.get("b", {}).get("commit") and not data.get(
            "identical"
        ):
            raise SystemExit(f"{path}: A and B are different commits; give identical-code runs")
        for cell, sides in data["samples"].items():
            a, b = cells.setdefault(cell, ([], []))
            a += sides["A"]
            b += sides["B"]
    return cells


def analyse(
    a: list[list[float]],
    b: list[list[float]],
    *,
    runs: int,
    unit: str = "round",
    tolerances: tuple[float, ...] = TOLERANCES,
    slowdowns: tuple[float, ...] = SLOWDOWNS,
) -> list[dict[str, Any]]:
    """One row per (rounds, tolerance): false alarms and the smallest slowdown always caught,
    with the verdict's samples taken per ``unit`` ("round": bench ab's; "step": every step)."""
    rows = []
    n = min(len(a), len(b))
    for r in range(2, n + 1):
        groups = [(a[i : i + r], b[i : i + r]) for i in range(0, n - r + 1, r)][:runs]
        if len(groups) < runs:
            break
        for tol in tolerances:
            alarms = sum(
                ab.verdict("c", ga, gb, tolerance=tol, unit=unit).verdict
                in (ab.REGRESSION, ab.IMPROVEMENT)
                for ga, gb in groups
            )
            caught = None
            for s in slowdowns:
                hits = sum(
                    ab.verdict(
                        "c", ga, [[t * (1 + s) for t in x] for x in gb], tolerance=tol
                    ).verdict
                    == ab.REGRESSION
                    for ga, gb in groups
                )
                if hits == len(groups):
                    caught = s
                    break
            ratios = [ab.verdict("c", ga, gb, tolerance=tol, unit=unit).ratio for ga, gb in groups]
            rows.append(
                {
                    "rounds": r,
                    "groups": len(groups),
                    "tolerance": tol,
                    "false_alarms": alarms,
                    "smallest_caught": caught,
                    "identical_ratio_min": min(ratios),
                    "identical_ratio_max": max(ratios),
                }
            )
    return rows


# One process of the material recorder: the tiny cell's model and input (bench ab's test
# profile: MobileNetV2 alpha 0.35, 32 px, full-fine-tune, random weights, batch 32, flip
# augmentation, synthetic uint8 input), 2 epochs of 30 steps; per step the CPU seconds of
# the whole process (every TensorFlow thread), warm-up steps left out.
_RECORD_ONE = r"""
import json, time
import keras, numpy as np
from harness import backend
from harness.cell import strategies
from harness.matrix import CellSpec
cell = CellSpec(dataset="tiny", strategy="full-fine-tune", precision="float32", seed=0,
    image_size=32, alpha=0.35, weights="none", batch_size=32, epochs=2, input="synthetic",
    num_classes=10, augmentation="flip", steps_per_epoch=30, warmup_steps=3)
keras.utils.set_random_seed(0)
backend.enable_determinism(True)
built = strategies.build(cell, 10, None, "random")
strategies.compile_stage(built, built.plan.stages[0])
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (30 * 32, 32, 32, 3), dtype=np.uint8)
y = rng.integers(0, 10, 30 * 32, dtype=np.int32)
steps = []
class Cpu(keras.callbacks.Callback):
    def on_train_batch_begin(self, b, logs=None): self.t0 = time.process_time()
    def on_train_batch_end(self, b, logs=None): steps.append(time.process_time() - self.t0)
built.model.fit(x, y, batch_size=32, epochs=2, shuffle=True, verbose=0, callbacks=[Cpu()])
print(json.dumps(steps[3:30] + steps[33:]))
"""


def record_material(out: Path, rounds: int) -> None:
    """Record ``rounds`` A B pairs of per-step CPU times, each a fresh process, alternately
    (what tests/material/ab-samples.json holds; see its ``description``)."""
    import os
    import platform
    import subprocess

    from harness import jsonio

    samples: dict[str, list[list[float]]] = {"A": [], "B": []}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for _ in range(rounds):
        for side in ("A", "B"):
            proc = subprocess.run(
                [sys.executable, "-c", _RECORD_ONE], env=env, capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-2000:])
            samples[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    data = {
        "description": (
            "Per-step CPU seconds (time.process_time of the whole process around each train "
            "step, warm-up left out) of bench ab's tiny cell (MobileNetV2 alpha 0.35, 32 px, "
            "full-fine-tune, batch 32, synthetic uint8 input), identical code on both sides: "
            f"{rounds} rounds, each an A then a B fresh process. CPU time, not wall time, so "
            "that the other jobs of the shared machine it was recorded on do not swamp the "
            "differences the verdict's tests are about; bench ab itself measures wall time."
        ),
        "command": f"python benchmarks/bench_ab.py --record-material {out} --rounds {rounds}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "identical": True,
        "a": {"commit": "identical"},
        "b": {"commit": "identical"},
        "samples": {"tiny/full-fine-tune-random/float32/s0": samples},
    }
    jsonio.atomic_write_bytes(out, jsonio.dumps(data).encode())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path, help="bench ab --json outputs (same commit)")
    ap.add_argument("--runs", type=int, default=5, help="A/B runs per setting (default 5)")
    ap.add_argument("--record-material", type=Path, default=None, metavar="OUT")
    ap.add_argument("--rounds", type=int, default=8, help="with --record-material")
    args = ap.parse_args(argv)
    if args.record_material:
        record_material(args.record_material, args.rounds)
        return 0
    from tabulate import tabulate

    for (cell, (a, b)), unit in itertools.product(load_rounds(args.files).items(), ab.UNITS):
        meds = [statistics.median(x) * 1e3 for x in a + b if x]
        print(
            f"\n{cell}, samples per {unit}: {len(a)} rounds; per-process median step "
            f"{min(meds):.1f}-{max(meds):.1f} ms"
        )
        rows = analyse(a, b, runs=args.runs, unit=unit)
        table = [
            [
                r["rounds"],
                r["groups"],
                f"{r['tolerance']:.3f}",
                r["false_alarms"],
                "—" if r["smallest_caught"] is None else f"{r['smallest_caught'] * 100:g}%",
                f"{r['identical_ratio_min']:.3f}-{r['identical_ratio_max']:.3f}",
            ]
            for r in rows
        ]
        headers = ("rounds", "runs", "tolerance", "false alarms", "smallest caught", "ratio A=B")
        print(tabulate(table, headers=headers))
        ok = [r for r in rows if r["false_alarms"] == 0 and r["smallest_caught"] is not None]
        if ok:
            best = min(ok, key=lambda r: (r["smallest_caught"], r["rounds"]))
            print(
                f"smallest slowdown caught with 0 false alarms in {best['groups']} runs: "
                f"{best['smallest_caught'] * 100:g}% at {best['rounds']} rounds, tolerance "
                f"{best['tolerance']:g}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
