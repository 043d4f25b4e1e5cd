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
        if data.get("a", {}).get("commit") != data.get("b", {}).get("commit"):
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
    tolerances: tuple[float, ...] = TOLERANCES,
    slowdowns: tuple[float, ...] = SLOWDOWNS,
) -> list[dict[str, Any]]:
    """One row per (rounds, tolerance): false alarms and the smallest slowdown always caught."""
    rows = []
    n = min(len(a), len(b))
    for r in range(ab.MIN_ROUNDS, n + 1):
        groups = [(a[i : i + r], b[i : i + r]) for i in range(0, n - r + 1, r)][:runs]
        if len(groups) < runs:
            break
        for tol in tolerances:
            alarms = sum(
                ab.verdict("c", ga, gb, tolerance=tol).verdict in (ab.REGRESSION, ab.IMPROVEMENT)
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
            ratios = [ab.verdict("c", ga, gb, tolerance=tol).ratio for ga, gb in groups]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path, help="bench ab --json outputs (same commit)")
    ap.add_argument("--runs", type=int, default=5, help="A/B runs per setting (default 5)")
    args = ap.parse_args(argv)
    from tabulate import tabulate

    for cell, (a, b) in load_rounds(args.files).items():
        meds = [statistics.median(x) * 1e3 for x in a + b if x]
        print(
            f"{cell}: {len(a)} rounds; per-process median step {min(meds):.1f}-{max(meds):.1f} ms"
        )
        rows = analyse(a, b, runs=args.runs)
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
