"""Interleaved A/B throughput comparison of two git revisions on this machine (``bench ab``).

Why interleave: two runs of the same code an hour apart on a shared machine differ by
up to 2× in train throughput, because the load around them changes. Running the two
revisions alternately, A B A B …, exposes both to the same drift, so what remains
between them is the code (asv's ``continuous`` does the same).

How (:func:`run_ab`):

1. Both revisions are checked out into temporary ``git worktree``s (detached), removed
   afterwards whatever happens (an error, Ctrl-C, SIGTERM).
2. Each revision runs with *this* environment (this interpreter, so this ``.venv``),
   with ``PYTHONPATH`` and ``BENCH_HOME`` pointing at its worktree, unless its
   ``uv.lock`` differs from the one this environment was installed from
   (:func:`harness.env.lock_info`): then the comparison would measure the dependencies
   too, so it is refused (exit 2) unless ``--allow-env-drift``.
3. Every selected cell runs once per revision per round, each time as a fresh
   ``bench run CELL`` process from that worktree into a temporary runs folder; the cell
   definitions come from *this* checkout's profile file, so both revisions run the same
   cells. Data (``BENCH_DATA_DIR``) is this checkout's, prepared once and shared.
4. The measured per-step train times of every round (``train_throughput.step_series``
   of the cell result, warm-up excluded) are the samples :func:`verdict` tests.

The verdict (:func:`verdict`, pure). The independent unit is a process: each round
gives one sample per side, the median of its measured step times, normalised by the
round's own level (the geometric mean of its A and B medians), since the load of a
shared machine moves both sides of a round alike and neighbouring steps of one process
together. A regression needs BOTH

- a significant difference: two-sided Mann-Whitney U over those per-round samples at
  p < :data:`P_THRESHOLD` (0.002, asv's level), and
- a material one: throughput ratio B / A (the median over rounds of
  ``median A / median B``) below ``1 - tolerance``. The tolerance is the profile's
  ``ab_relative`` (``--tolerance`` overrides; :data:`DEFAULT_TOLERANCE` when the profile
  has none). It is not the profile's ``throughput_relative``: that one is sized for runs
  at different times against a stored baseline, where drift dominates; interleaving
  removes the drift, so A/B can flag changes that comparison cannot see.

"not enough data" when the test cannot reach the threshold with that many rounds,
whatever the values: below :data:`MIN_ROUNDS` (7) rounds with samples on both sides.
The per-step samples are all kept in the ``--json`` output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness import env, jsonio, paths, runfolder, stats
from harness.errors import EXIT_FAILURE, EXIT_OK, BenchError, InputError

AB_KIND = "transfer-bench.ab"
AB_SCHEMA = 1

P_THRESHOLD = 0.002  # asv's significance level for "different"
MIN_ROUNDS = stats.samples_needed(P_THRESHOLD)  # 7: fewer rounds cannot reach it
DEFAULT_ROUNDS = 8
DEFAULT_TOLERANCE = 0.05

REGRESSION = "regression"
IMPROVEMENT = "improvement"
WITHIN_NOISE = "within noise"
NOT_ENOUGH_DATA = "not enough data"
FAILED = "failed"
VERDICTS = (REGRESSION, FAILED, NOT_ENOUGH_DATA, IMPROVEMENT, WITHIN_NOISE)


@dataclass(frozen=True)
class ABVerdict:
    """One cell's A/B outcome. ``median_a``/``_b`` are the pooled step seconds as measured;
    ``ratio`` is throughput B / A, the median over rounds of ``median A / median B`` of the
    round (below 1: B is slower)."""

    cell_id: str
    verdict: str
    rounds: int  # A B pairs with step samples on both sides
    steps_a: int  # pooled step samples
    steps_b: int
    median_a: float | None
    median_b: float | None
    ratio: float | None
    p_value: float | None
    tolerance: float
    p_threshold: float
    note: str = ""


UNITS = ("round", "step")


def paired_medians(
    rounds_a: Sequence[Sequence[float]], rounds_b: Sequence[Sequence[float]]
) -> list[tuple[float, float]]:
    """``(median A, median B)`` step time of each round with samples on both sides."""
    return [
        (statistics.median(map(float, ra)), statistics.median(map(float, rb)))
        for ra, rb in zip(rounds_a, rounds_b, strict=False)
        if len(ra) and len(rb)
    ]


def test_samples(
    rounds_a: Sequence[Sequence[float]],
    rounds_b: Sequence[Sequence[float]],
    unit: str = "round",
) -> tuple[list[float], list[float]]:
    """The samples the U test compares, each round normalised by its own level.

    Rounds are the A B pairs run back to back; dividing by the pair's level removes what
    the machine's load did between rounds and keeps what differs within the pair.
    ``unit = "round"`` (what ``bench ab`` tests): one sample per process and side, its
    median step time over the pair's geometric mean, ``sqrt(mA / mB)`` and ``sqrt(mB / mA)``.
    A process is the independent unit: the steps of one process share its conditions (on
    a shared machine the load comes in bursts of seconds, so neighbouring steps move
    together), and a test that counted them as independent would see a difference
    between two runs of the same code. ``unit = "step"``: every step over the pair's
    pooled median (kept for comparison, see benchmarks/bench_ab.py).
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    a: list[float] = []
    b: list[float] = []
    for ra, rb in zip(rounds_a, rounds_b, strict=False):
        if not len(ra) or not len(rb):
            continue
        if unit == "round":
            ma, mb = statistics.median(map(float, ra)), statistics.median(map(float, rb))
            a.append(math.sqrt(ma / mb))
            b.append(math.sqrt(mb / ma))
        else:
            level = statistics.median([*map(float, ra), *map(float, rb)])
            a += [float(x) / level for x in ra]
            b += [float(x) / level for x in rb]
    return a, b


def verdict(
    cell_id: str,
    rounds_a: Sequence[Sequence[float]],
    rounds_b: Sequence[Sequence[float]],
    *,
    tolerance: float,
    p_threshold: float = P_THRESHOLD,
    failures: Sequence[str] = (),
    unit: str = "round",
) -> ABVerdict:
    """Judge B against A from per-round step times (one list per process, in seconds;
    ``rounds_a[i]`` and ``rounds_b[i]`` ran back to back).

    A regression needs the two-sided Mann-Whitney U test over the round-normalised
    samples (:func:`test_samples`) at p < ``p_threshold`` AND the ratio (throughput B / A,
    the median over rounds of ``median A / median B``) below ``1 - tolerance``; an
    improvement, the same test and a ratio above ``1 + tolerance``. "not enough data"
    when the test could not reach ``p_threshold`` with that many samples, whatever they
    were (with one sample per round: fewer than 7 rounds at 0.002). ``failures``: one line
    per round whose cell produced no samples; any makes the verdict "failed". Pure.
    """
    if not 0 <= tolerance < 1:
        raise InputError(f"A/B tolerance must be in [0, 1), got {tolerance!r}")
    raw_a = [float(x) for r in rounds_a for x in r]
    raw_b = [float(x) for r in rounds_b for x in r]
    pairs = paired_medians(rounds_a, rounds_b)
    a, b = test_samples(rounds_a, rounds_b, unit)
    med_a = statistics.median(raw_a) if raw_a else None
    med_b = statistics.median(raw_b) if raw_b else None
    ratio = statistics.median(ma / mb for ma, mb in pairs) if pairs else None

    def out(v: str, p: float | None, note: str) -> ABVerdict:
        return ABVerdict(
            cell_id, v, len(pairs), len(raw_a), len(raw_b), med_a, med_b, ratio, p,
            tolerance, p_threshold, note,
        )  # fmt: skip

    if failures:
        return out(FAILED, None, "; ".join(failures))
    floor = stats.smallest_p(len(a), len(b))
    if floor >= p_threshold:
        need = stats.samples_needed(p_threshold)
        what = f"{need} rounds" if unit == "round" else f"{need} steps a side"
        return out(
            NOT_ENOUGH_DATA,
            None,
            f"{len(pairs)} round(s) with step times on both sides; p < {p_threshold:g} needs "
            f"at least {what}",
        )
    p = stats.mann_whitney(a, b)
    assert ratio is not None
    if p >= p_threshold:
        return out(WITHIN_NOISE, p, "no significant difference")
    if ratio < 1 - tolerance:
        return out(REGRESSION, p, f"B slower: {(1 / ratio - 1) * 100:.1f}% more time per step")
    if ratio > 1 + tolerance:
        return out(IMPROVEMENT, p, f"B faster: {(1 - 1 / ratio) * 100:.1f}% less time per step")
    return out(WITHIN_NOISE, p, f"significant, but within the {tolerance * 100:g}% tolerance")


# --- the whole comparison ------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One revision under test."""

    label: str  # "A" (base) or "B" (head)
    rev: str  # as the user wrote it
    commit: str  # full sha


@dataclass
class ABResult:
    """Everything ``bench ab`` measured: the sides, the samples per round, the verdicts."""

    a: Side
    b: Side
    profile: str
    rounds: int
    tolerance: float
    tolerance_source: str
    env_drift: list[str]
    verdicts: list[ABVerdict] = field(default_factory=list)
    samples: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)
    wall_seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        bad = any(v.verdict in (REGRESSION, FAILED) for v in self.verdicts)
        return EXIT_FAILURE if bad else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": asdict(self.a),
            "b": asdict(self.b),
            "profile": self.profile,
            "rounds": self.rounds,
            "tolerance": self.tolerance,
            "tolerance_source": self.tolerance_source,
            "p_threshold": P_THRESHOLD,
            "env_drift": self.env_drift,
            "verdicts": [asdict(v) for v in self.verdicts],
            "samples": self.samples,
            "failures": self.failures,
            "wall_seconds": self.wall_seconds,
            "exit_code": self.exit_code,
        }


TABLE_HEADERS = (
    "cell",
    "verdict",
    "train img/s ratio B/A (allowed)",
    "p (U test)",
    "median step A / B ms",
    "rounds",
    "notes",
)


def table_rows(verdicts: Sequence[ABVerdict]) -> list[list[str]]:
    rows = []
    for v in verdicts:
        ratio = "—" if v.ratio is None else f"{v.ratio:.3f} (±{v.tolerance:.2f})"
        p = "—" if v.p_value is None else f"{v.p_value:.2g}"
        med = (
            "—"
            if v.median_a is None or v.median_b is None
            else f"{v.median_a * 1e3:.1f} / {v.median_b * 1e3:.1f}"
        )
        rows.append([v.cell_id, v.verdict, ratio, p, med, str(v.rounds), v.note])
    return rows


def render_table(result: ABResult, tablefmt: str = "simple") -> str:
    table = tabulate(table_rows(result.verdicts), headers=TABLE_HEADERS, tablefmt=tablefmt)
    counts = {k: sum(1 for v in result.verdicts if v.verdict == k) for k in VERDICTS}
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    lines = [
        f"A = {result.a.rev} ({result.a.commit[:12]})   B = {result.b.rev} ({result.b.commit[:12]})"
        f"   profile {result.profile}, {result.rounds} round(s) A B A B …",
        "",
        table,
        "",
        f"regression: Mann-Whitney U over the rounds' median step times (each round "
        f"normalised by its own level) p < {P_THRESHOLD:g} AND ratio < 1 - "
        f"{result.tolerance:g} (tolerance from {result.tolerance_source})",
    ]
    if result.env_drift:
        lines.append("environment drift allowed: " + "; ".join(result.env_drift))
    lines.append(f"{summary or 'no cells'} in {result.wall_seconds:.0f}s")
    return "\n".join(lines)


def render_json(result: ABResult) -> str:
    return jsonio.dumps({**result.to_dict(), "kind": AB_KIND, "schema": AB_SCHEMA})


def write_record(path: Path, result: ABResult) -> None:
    """``result`` as ``--json`` prints it, written atomically (verdicts empty until the end)."""
    jsonio.write_json(path, result.to_dict(), kind=AB_KIND, schema=AB_SCHEMA)


# --- git -----------------------------------------------------------------------------------


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or [""])[-1]
        raise InputError(f"git {' '.join(args)} in {repo} failed: {err}")
    return proc


def repo_root(start: Path) -> Path:
    """The git work tree holding ``start`` (InputError when it is not in one)."""
    proc = _git(start, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        raise InputError(f"{start} is not inside a git repository: bench ab compares git revisions")
    return Path(proc.stdout.strip())


def resolve(repo: Path, rev: str, label: str) -> Side:
    proc = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise InputError(f"{label} revision {rev!r} is not a commit in {repo}")
    return Side(label, rev, proc.stdout.strip())


def lock_drift(repo: Path, side: Side, digest: str | None) -> str | None:
    """Why ``side``'s ``uv.lock`` is not the one this environment was installed from
    (``digest``: its sha256, :func:`harness.env.lock_info`), or None when it is."""
    proc = subprocess.run(
        ["git", "-C", str(repo), "show", f"{side.commit}:uv.lock"], capture_output=True
    )
    if proc.returncode != 0:
        return f"{side.label} ({side.rev}) has no uv.lock"
    if digest is None:
        return "this environment's uv.lock is not found, so it cannot be compared"
    if hashlib.sha256(proc.stdout).hexdigest() != digest:
        return f"{side.label} ({side.rev}) has another uv.lock than this environment"
    return None


@contextlib.contextmanager
def worktrees(repo: Path, sides: Sequence[Side]) -> Iterator[tuple[Path, dict[str, Path]]]:
    """Detached worktrees of ``sides`` under a temporary folder; removed on any exit."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    made: list[Path] = []
    try:
        trees = {}
        for side in sides:
            path = tmp / f"tree-{side.label}"
            _git(repo, "worktree", "add", "--detach", "--quiet", str(path), side.commit)
            made.append(path)
            trees[side.label] = path
        yield tmp, trees
    finally:
        for path in made:
            subprocess.run(
                ["git", "-C", str(repo), "worktree", "remove", "--force", str(path)],
                capture_output=True,
            )
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)


def side_env(tree: Path, data_dir: Path) -> dict[str, str]:
    """This environment, with the harness imported from ``tree`` and its files used."""
    out = dict(os.environ)
    out.pop("BENCH_PROFILE", None)
    out.update(
        PYTHONPATH=str(tree),
        BENCH_HOME=str(tree),
        BENCH_DATA_DIR=str(data_dir),
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return out


def check_imports_from(tree: Path, env: dict[str, str]) -> None:
    """Make sure a process started like a cell imports the harness from ``tree``."""
    proc = subprocess.run(
        [sys.executable, "-c", "import harness, sys; sys.stdout.write(harness.__file__)"],
        cwd=tree, env=env, capture_output=True, text=True,
    )  # fmt: skip
    where = Path(proc.stdout.strip() or "?").resolve()
    if proc.returncode != 0 or not where.is_relative_to(tree.resolve()):
        raise BenchError(
            f"a process started in the worktree {tree} imports the harness from {where}, "
            f"not from the worktree: the A/B comparison would measure the wrong code",
            exit_code=3,
        )


# --- running rounds ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """The outcome of one cell process: its measured step times, or why there are none."""

    steps: tuple[float, ...]
    error: str | None
    seconds: float


def run_cell_process(
    tree: Path, env: dict[str, str], cell_id: str, profile: Path, runs: Path, run_id: str
) -> Sample:
    """``bench run CELL`` from ``tree``; the cell result's measured step times."""
    t0 = time.perf_counter()
    cmd = [
        sys.executable, "-m", "harness.cli", "run", cell_id, "--profile", str(profile),
        "--runs-dir", str(runs), "--run-id", run_id,
    ]  # fmt: skip
    log = runs / f"{run_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        # Its own session: on Ctrl-C or SIGTERM here, the whole process group (the CLI and
        # its cell process) is ended, not only the CLI.
        proc = subprocess.Popen(
            cmd, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode = proc.wait()
        except BaseException:
            _end_group(proc)
            raise
    secs = time.perf_counter() - t0
    cell_file = runfolder.cell_path(runs / run_id, cell_id)
    try:
        data = json.loads(cell_file.read_text())
    except (OSError, ValueError):
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        last = lines[-1] if lines else "no output"
        return Sample((), f"exit {returncode}, no result: {last[:200]} (log {log.name})", secs)
    if data.get("status") != "ok":
        return Sample((), f"cell {data.get('status')}: {str(data.get('error'))[:200]}", secs)
    tp = data.get("train_throughput") or {}
    series = tuple(float(s) for s in tp.get("step_series") or ())
    if not series:
        return Sample((), "the cell result holds no measured train steps", secs)
    return Sample(series, None, secs)


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a ``bench run`` process group: SIGTERM, then SIGKILL after a grace period."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


Progress = Callable[[str], None]


def run_ab(
    base: str,
    head: str,
    *,
    profile: str,
    only: str | None = None,
    rounds: int = DEFAULT_ROUNDS,
    tolerance: float | None = None,
    allow_env_drift: bool = False,
    progress: Progress | None = None,
    record: Path | None = None,
) -> ABResult:
    """Run the A/B comparison (see the module doc) and return its verdicts.

    ``record``: a file rewritten (atomically, as ``--json`` prints it) after every cell
    process, so an interrupted or failed comparison keeps what it measured."""
    from harness.matrix import load_matrix

    if rounds < 1:
        raise InputError(f"--rounds must be >= 1, got {rounds}")
    if tolerance is not None and not 0 <= tolerance < 1:
        raise InputError(f"--tolerance must be in [0, 1), got {tolerance!r}")
    say = progress or (lambda line: None)
    t_start = time.perf_counter()
    matrix = load_matrix(profile)
    cells = [c.cell_id for c in matrix.select(only)]
    if tolerance is not None:
        tol, source = tolerance, "--tolerance"
    elif matrix.tolerances.ab_relative is not None:
        tol, source = matrix.tolerances.ab_relative, f"profile {matrix.profile}"
    else:
        tol, source = DEFAULT_TOLERANCE, "the default (profile sets no ab_relative)"

    repo = repo_root(paths.project_root())
    a, b = resolve(repo, base, "A"), resolve(repo, head, "B")
    lock = env.lock_info()["digest"]
    drift = [d for d in (lock_drift(repo, s, lock) for s in (a, b)) if d]
    if drift and not allow_env_drift:
        raise InputError(
            f"{'; '.join(drift)}: its dependencies differ from this environment's, so the "
            "comparison would measure them too; rerun with --allow-env-drift to compare anyway "
            "in this environment, or compare revisions with the same lock"
        )
    data_dir = paths.data_dir()
    result = ABResult(a, b, matrix.profile, rounds, tol, source, drift)
    result.samples = {cid: {"A": [], "B": []} for cid in cells}
    result.failures = {cid: [] for cid in cells}
    with worktrees(repo, (a, b)) as (tmp, trees):
        envs = {s.label: side_env(trees[s.label], data_dir) for s in (a, b)}
        for s in (a, b):
            check_imports_from(trees[s.label], envs[s.label])
        for r in range(1, rounds + 1):
            for i, cid in enumerate(cells):
                for s in (a, b):
                    sample = run_cell_process(
                        trees[s.label], envs[s.label], cid, matrix.path.resolve(),
                        tmp / f"runs-{s.label}", f"r{r:02d}-c{i:03d}",
                    )  # fmt: skip
                    result.samples[cid][s.label].append(list(sample.steps))
                    if record is not None:
                        result.wall_seconds = time.perf_counter() - t_start
                        write_record(record, result)
                    if sample.error:
                        result.failures[cid].append(f"{s.label} round {r}: {sample.error}")
                        say(f"round {r}/{rounds} {s.label} {cid}: {sample.error}")
                    else:
                        med = statistics.median(sample.steps) * 1e3
                        say(
                            f"round {r}/{rounds} {s.label} {cid}: {len(sample.steps)} steps, "
                            f"median {med:.1f} ms ({sample.seconds:.0f}s)"
                        )
    result.verdicts = [
        verdict(cid, s["A"], s["B"], tolerance=tol, failures=result.failures[cid])
        for cid, s in result.samples.items()
    ]
    result.wall_seconds = time.perf_counter() - t_start
    if record is not None:
        write_record(record, result)
    return result
