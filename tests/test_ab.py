"""``bench ab``: the verdict on recorded samples, and real A/B runs between two commits.

- The pure verdict (:func:`harness.ab.verdict`) on step times recorded on this 2-core
  machine, 8 rounds of fresh processes with identical code on both sides
  (tests/recorded/README.md says how): identical code gives no alarm (where a per-step
  test raises one), the same samples with B 20 % slower are caught while 10 % is not
  significant in 8 rounds on this machine, too few rounds give "not enough data".
- Real runs in a test repository (a copy of this project's files, committed; then a
  second commit): a second commit whose uv.lock differs is refused (exit 2) unless
  --allow-env-drift; one round of a real ``bench ab`` between two commits gives each
  side's step times from its own worktree (one round: "not enough data"), a cell that
  fails on a side fails the comparison, and the worktrees are removed; Ctrl-C removes
  them too. Sized for CI: 5 cell processes in all.
- Opt-in (``BENCH_AB_FULL_TEST=1``, 14 cell processes, minutes): a commit that adds a
  fixed amount of compute to every train step is reported as a regression in 7 rounds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tinymatrix

from harness import ab, stats

REPO = Path(__file__).resolve().parent.parent
MATERIAL = REPO / "tests" / "recorded" / "ab-samples.json"
CELL = "tiny/full-fine-tune-random/float32/s0"

TINY = tinymatrix.toml(
    tinymatrix.group("tiny", "full-fine-tune"),
    tinymatrix.group("tiny", "scratch", precisions=["mixed_float16"]),
    description="bench ab test: one tiny synthetic-input training cell",
    tolerances={"accuracy_points": 100.0, "ab_relative": 0.05},
    input="synthetic",
    num_classes=10,
    batch_size=32,
    steps_per_epoch=30,
    warmup_steps=3,
    inference_batch=32,
)


# --- the verdict on recorded samples -------------------------------------------------------


@pytest.fixture(scope="module")
def recorded() -> dict[str, list[list[float]]]:
    data = json.loads(MATERIAL.read_text())
    return data["samples"][CELL]


def test_identical_code_gives_no_alarm(recorded: dict[str, list[list[float]]]) -> None:
    """The recorded ratio is 0.94 (process-to-process spread, not code): the round-level test
    finds no significant difference, which is what keeps it from an alarm; counting every
    step as a sample would call the identical revisions different."""
    v = ab.verdict(CELL, recorded["A"], recorded["B"], tolerance=0.05)
    assert v.verdict == ab.WITHIN_NOISE, v
    assert v.rounds == len(recorded["A"]) >= ab.MIN_ROUNDS
    assert v.p_value > 0.05 and 0.85 <= v.ratio <= 1.15
    per_step = ab.verdict(CELL, recorded["A"], recorded["B"], tolerance=0.05, unit="step")
    assert per_step.verdict == ab.REGRESSION  # the false alarm the per-round test avoids


def test_a_twenty_percent_slowdown_is_caught(recorded: dict[str, list[list[float]]]) -> None:
    """On these 8 rounds: B 20 % slower is a regression (p ≈ 0.001); B 10 % slower is not
    significant (p ≈ 0.01), since single processes of identical code differ by up to ±30 %
    here. Catching 10 % on this machine takes more rounds (README, Performance)."""
    slower = [[t * 1.20 for t in r] for r in recorded["B"]]
    v = ab.verdict(CELL, recorded["A"], slower, tolerance=0.05)
    assert v.verdict == ab.REGRESSION, v
    assert v.p_value < ab.P_THRESHOLD and v.ratio < 0.95
    # B 30 % faster is an improvement (the recorded B side ran 6 % slow, so 20 % is not)
    faster = [[t / 1.30 for t in r] for r in recorded["B"]]
    assert ab.verdict(CELL, recorded["A"], faster, tolerance=0.05).verdict == ab.IMPROVEMENT
    # significant, but not beyond a tolerance wider than the change: no alarm
    assert ab.verdict(CELL, recorded["A"], slower, tolerance=0.25).verdict == ab.WITHIN_NOISE
    ten = ab.verdict(
        CELL, recorded["A"], [[t * 1.10 for t in r] for r in recorded["B"]], tolerance=0.05
    )
    assert ten.verdict == ab.WITHIN_NOISE and ab.P_THRESHOLD < ten.p_value < 0.05


def test_too_few_samples_is_not_enough_data(recorded: dict[str, list[list[float]]]) -> None:
    a, b = recorded["A"], [[t * 1.5 for t in r] for r in recorded["B"]]
    assert ab.verdict(CELL, a, b, tolerance=0.05).verdict == ab.REGRESSION  # all 8 rounds
    six = ab.verdict(CELL, a[:6], b[:6], tolerance=0.05)  # 6 rounds: p >= 0.0022 at best
    assert six.verdict == ab.NOT_ENOUGH_DATA and "at least 7 rounds" in six.note
    # a round lost on one side does not pair up: 7 rounds with one empty are 6
    lost = ab.verdict(CELL, a[:7], [*b[:6], []], tolerance=0.05)
    assert lost.verdict == ab.NOT_ENOUGH_DATA and lost.rounds == 6
    assert ab.verdict(CELL, a[:1], b[:1], tolerance=0.05).verdict == ab.NOT_ENOUGH_DATA
    assert ab.verdict(CELL, [], [], tolerance=0.05).verdict == ab.NOT_ENOUGH_DATA


def test_a_failed_round_fails_the_cell(recorded: dict[str, list[list[float]]]) -> None:
    v = ab.verdict(
        CELL, recorded["A"], recorded["B"], tolerance=0.05, failures=["B round 2: exit 1"]
    )
    assert v.verdict == ab.FAILED and "B round 2" in v.note
    with pytest.raises(ab.InputError, match=r"1\.5"):
        ab.verdict(CELL, [[1.0]], [[1.0]], tolerance=1.5)


def test_rounds_are_normalised_by_their_own_level() -> None:
    """Rounds run while the machine was twice as busy move both sides alike: each round's
    own level takes it out, so a steady 10 % gap shows through as 10 %. Counting every
    step as a sample instead would call two runs of the same code different when one
    process hits a busy spell."""
    level = [1.0, 2.0, 1.0, 3.0, 1.0, 2.0, 1.5, 1.0]
    a = [[x * f for f in (1.0, 1.01, 0.99) * 10] for x in level]
    b = [[x * 1.1 * f for f in (1.0, 1.01, 0.99) * 10] for x in level]
    na, nb = ab.test_samples(a, b)
    assert len(na) == len(nb) == 8 and max(na) < 1.0 < min(nb)
    v = ab.verdict(CELL, a, b, tolerance=0.05)
    assert v.verdict == ab.REGRESSION and v.ratio == pytest.approx(1 / 1.1)
    # identical code, half of the B processes slowed by busy spells: no steady difference
    # between the revisions, which the per-round test sees and a per-step test does not
    busy = [[t * (1.4 if i % 2 else 1.0) for t in r] for i, r in enumerate(a)]
    assert ab.verdict(CELL, a, busy, tolerance=0.05).verdict == ab.WITHIN_NOISE
    assert ab.verdict(CELL, a, busy, tolerance=0.05, unit="step").verdict == ab.REGRESSION
    with pytest.raises(ValueError, match="unit"):
        ab.test_samples(a, b, "epoch")


def test_smallest_p_and_repeat_stats() -> None:
    assert stats.smallest_p(5, 5) == pytest.approx(2 / 252)
    assert stats.smallest_p(7, 7) < 0.002 < stats.smallest_p(6, 6)
    assert stats.smallest_p(0, 3) == 1.0
    r = stats.RepeatStats.of([10.0, 12.0, 11.0, 13.0, 9.0])
    assert (r.n, r.median, r.p25, r.p75, r.iqr) == (5, 11.0, 10.0, 12.0, 2.0)
    assert r.cv == pytest.approx(r.stdev / 11.0) and r.stdev == pytest.approx(1.5811, rel=1e-4)
    assert r.to_dict()["cv"] == r.cv and r.relative_iqr == pytest.approx(2 / 11)
    one = stats.RepeatStats.of([4.0])
    assert (one.iqr, one.cv, one.stdev) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        stats.RepeatStats.of([])
    with pytest.raises(ValueError, match="nan"):
        stats.RepeatStats.of([1.0, float("nan")])


def test_repeat_summary_of_a_throughput_cell() -> None:
    """Three repeats of a cell: each reduced to its median, then median/IQR/CV across them."""
    out = stats.throughput_repeats([[0.1, 0.1, 0.3], [0.2, 0.2], [0.1, 0.4, 0.1]], 32)
    assert out["repeats"] == 3 and out["median_step_s"] == [0.1, 0.2, 0.1]
    assert out["images_per_s"] == pytest.approx([320.0, 160.0, 320.0])
    s = out["summary"]
    assert s["median"] == pytest.approx(320.0) and s["iqr"] == pytest.approx(80.0)
    assert s["cv"] == pytest.approx(
        statistics.stdev([320, 160, 320]) / statistics.fmean([320, 160, 320])
    )
    with pytest.raises(ValueError, match="repeat 1 has no measured steps"):
        stats.throughput_repeats([[0.1], []], 32)


def test_table_and_json() -> None:
    side_a, side_b = ab.Side("A", "v1", "a" * 40), ab.Side("B", "HEAD", "b" * 40)
    res = ab.ABResult(side_a, side_b, "smoke", 2, 0.05, "--tolerance", [])
    res.verdicts = [
        ab.verdict("c1", [[1.0 + i / 100] * 30 for i in range(8)],
                   [[1.2 + i / 100] * 30 for i in range(8)], tolerance=0.05),
        ab.verdict("c2", [[1.0]], [[1.0]], tolerance=0.05),
    ]  # fmt: skip
    assert [v.verdict for v in res.verdicts] == [ab.REGRESSION, ab.NOT_ENOUGH_DATA]
    assert res.exit_code == 1
    table = ab.render_table(res)
    assert "c1" in table and "regression" in table and "not enough data" in table
    data = json.loads(ab.render_json(res))
    assert data["kind"] == "transfer-bench.ab" and data["exit_code"] == 1


# --- real runs in a test repository --------------------------------------------------------

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]

# Extra work in every train step of revision B: a fixed amount of pure-Python compute at the
# start of each step, inside the step timer's bracket (environment-free: no flag, no sleep).
STEP_BEGIN = (
    "    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None)"
    " -> None:\n        self._t0 = time.perf_counter()\n"
)
INJECT_OLD = STEP_BEGIN
INJECT_NEW = (
    STEP_BEGIN
    + "        sum(i * i for i in range(800_000))  # injected by tests/test_ab.py: work per step\n"
)


def _project_files() -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def _commit(repo: Path, message: str) -> str:
    subprocess.run([*GIT, "-C", str(repo), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(repo), "commit", "-q", "-m", message], check=True)
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def test_repo(tmp_path: Path) -> Path:
    """A git repository holding a copy of this project's files, one commit."""
    repo = tmp_path / "repo"
    for rel in _project_files():
        dst = repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dst)
    (repo / "benchmarks" / "ab-tiny.toml").write_text(TINY)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    _commit(repo, "base")
    return repo


def _env(repo: Path, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BENCH_PROFILE", None)
    env.update(
        BENCH_HOME=str(repo),
        BENCH_DATA_DIR=str(tmp_path / "data"),
        PYTHONPATH=str(repo),
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        TMPDIR=str(tmp_path / "tmp"),
    )
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return env


def _bench_ab(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "ab", *args],
        cwd=repo, env=env, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip


def _worktrees(repo: Path) -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(repo), "worktree", "list", "--porcelain"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")]


def _left_behind(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "tmp").glob("bench-ab-*"))


def _processes_under(folder: Path) -> list[str]:
    """Command lines of live processes that name ``folder`` (cells of a stopped bench ab)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in text:
            found.append(text[:200])
    return found


def test_env_drift_is_refused(test_repo: Path, tmp_path: Path) -> None:
    """B's commit changes uv.lock; this environment stays installed from A's."""
    lock = test_repo / "uv.lock"
    original = lock.read_bytes()
    lock.write_bytes(original + b"\n# another lock\n")
    _commit(test_repo, "change the lock")
    lock.write_bytes(original)  # the environment (and the working tree) keep the old lock
    env = _env(test_repo, tmp_path)
    proc = _bench_ab(test_repo, env, "HEAD~1", "HEAD", "--profile", "ab-tiny", "--only", "tiny/")
    assert proc.returncode == 2, proc.stderr
    assert "B (HEAD) has another uv.lock" in proc.stderr and "--allow-env-drift" in proc.stderr
    assert proc.stderr.count("\n") == 1  # one line, no traceback
    assert _worktrees(test_repo) == [str(test_repo)] and not _left_behind(tmp_path)
    bad = _bench_ab(test_repo, env, "no-such-rev", "--profile", "ab-tiny")
    assert bad.returncode == 2 and "'no-such-rev' is not a commit" in bad.stderr


def _inject_work(repo: Path) -> str:
    """Commit, on top of ``repo``'s HEAD, a revision whose every train step does more work."""
    timing = repo / "harness" / "cell" / "timing.py"
    text = timing.read_text()
    assert text.count(INJECT_OLD) == 1  # StepTimer.on_train_batch_begin
    timing.write_text(text.replace(INJECT_OLD, INJECT_NEW))
    return _commit(repo, "extra work per train step")


def test_a_real_ab_between_two_commits(test_repo: Path, tmp_path: Path) -> None:
    """One round, A = the base commit, B = a commit with extra work per step: the float32
    cell gives one sample per side ("not enough data" after one round); mixed_float16
    needs a GPU, so on a CPU that cell is refused on both sides and fails the comparison
    (exit 1); the worktrees are removed."""
    base = _commit_of(test_repo, "HEAD")
    head = _inject_work(test_repo)
    env = _env(test_repo, tmp_path)
    proc = _bench_ab(
        test_repo, env, "HEAD~1", "HEAD", "--profile", "ab-tiny", "--only", "tiny/",
        "--rounds", "1", "--json",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert (data["a"]["commit"], data["b"]["commit"]) == (base, head)
    assert data["tolerance"] == 0.05 and data["tolerance_source"] == "profile ab-tiny"
    ok, bad = data["verdicts"]
    assert ok["cell_id"] == CELL and ok["verdict"] == "not enough data" and ok["rounds"] == 1
    (steps_a,), (steps_b,) = data["samples"][CELL]["A"], data["samples"][CELL]["B"]
    assert len(steps_a) == len(steps_b) == 2 * 30 - 3  # two epochs, warm-up steps excluded
    assert bad["verdict"] == "failed" and "A round 1" in bad["note"] and "B round 1" in bad["note"]
    assert _worktrees(test_repo) == [str(test_repo)] and not _left_behind(tmp_path)


def _commit_of(repo: Path, rev: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", rev], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_ctrl_c_removes_the_worktrees(test_repo: Path, tmp_path: Path) -> None:
    """SIGINT as a terminal's Ctrl-C delivers it (restored to the default in the child: a
    test run started as a background job would otherwise pass on SIGINT ignored)."""
    env = _env(test_repo, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "ab", "HEAD", "--profile", "ab-tiny", "--only",
         "full-fine-tune", "--rounds", "3"],
        cwd=test_repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while len(_worktrees(test_repo)) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(_worktrees(test_repo)) == 3, "the worktrees never appeared"
    while not _processes_under(tmp_path / "tmp") and time.monotonic() < deadline:
        time.sleep(0.5)  # until the first round's bench run has started
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert _worktrees(test_repo) == [str(test_repo)] and not _left_behind(tmp_path)
    assert not _processes_under(tmp_path / "tmp")  # the round's bench run and cell ended too


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("BENCH_AB_FULL_TEST"),
    reason="14 cell processes (minutes): set BENCH_AB_FULL_TEST=1 to run it",
)
def test_bench_ab_catches_extra_work_per_step(test_repo: Path, tmp_path: Path) -> None:
    """B adds a fixed amount of compute to every train step; 7 rounds, A B A B … (the fewest
    with which the test can reach p < 0.002)."""
    _inject_work(test_repo)
    env = _env(test_repo, tmp_path)
    proc = _bench_ab(
        test_repo, env, "HEAD~1", "HEAD", "--profile", "ab-tiny", "--only", "full-fine-tune",
        "--rounds", "7", "--json",
    )  # fmt: skip
    data = json.loads(proc.stdout)
    (v,) = data["verdicts"]
    print(json.dumps({k: v[k] for k in ("verdict", "ratio", "p_value", "rounds")}))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert v["verdict"] == "regression" and v["rounds"] == 7
    assert data["tolerance"] == 0.05 and data["tolerance_source"] == "profile ab-tiny"
    assert data["a"]["rev"] == "HEAD~1" and len(data["samples"][CELL]["B"]) == 7
    assert _worktrees(test_repo) == [str(test_repo)] and not _left_behind(tmp_path)
