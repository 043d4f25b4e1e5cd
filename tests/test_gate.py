"""The gate's resolving power (issue 19), with real training on a tiny matrix.

One recorded baseline (``bench baseline record``: 2 cells, 3 repeats, 2 noise seeds) on this
machine's reproducibility key, then: an identical rerun (exact tier, every cell
``identical``, no improvement), a one-line numerics change in a copy of the harness
(every cell ``changed``, naming the first divergence), a run on another key (an intra-op
thread override: the statistical tier, said so) and a baseline whose cells all differ in
one config field (exit 4, naming it). The noise arithmetic is checked on its own, fast,
against simulated noise whose true false-alarm rate is known.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import tinymatrix
from conftest import BENCH, REPO

from harness import runfolder
from harness.analysis import baseline, noise, reprokey
from harness.errors import InputError
from harness.perf import inject

TINY = tinymatrix.toml(
    tinymatrix.group("synth-xray", ["fine-tune", "full-fine-tune"]),
    tolerances={"accuracy_points": 1.0, "throughput_relative": 0.3},
    baseline={"noise_seeds": 2, "repeats": 3},
    drop=("steps_per_epoch",),  # real data: its own steps
    weights="mnv2-synth-a035-32",
    batch_size=32,
    epochs=1,
    target_accuracy=0.6,
    warmup_steps=3,
    inference_batch=32,
    inference_steps=5,
)
CELLS = ("synth-xray/fine-tune/float32/s0", "synth-xray/full-fine-tune/float32/s0")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project home of its own (baselines are written under it), with the real manifest,
    the shipped weights and the tiny profile."""
    root = tmp_path_factory.mktemp("gate-home")
    (root / "data").mkdir()
    (root / "data" / "manifest.json").write_bytes((REPO / "data" / "manifest.json").read_bytes())
    (root / "data" / "weights").symlink_to(REPO / "data" / "weights")
    (root / "tiny.toml").write_text(TINY)
    return root


@pytest.fixture(scope="module")
def bench(home: Path, bench_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
        full = {**bench_env, "BENCH_HOME": str(home), **env}
        for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS", "TF_NUM_INTEROP_THREADS"):
            if var not in env:
                full.pop(var, None)
        return subprocess.run(
            [*BENCH, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=1500
        )

    return run


def _all(bench: Callable[..., subprocess.CompletedProcess[str]], home: Path, run_id: str, **kw):
    return bench(
        "all", "--profile", str(home / "tiny.toml"), "--runs-dir", str(home / "runs"),
        "--run-id", run_id, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def recorded(home: Path, bench: Callable[..., subprocess.CompletedProcess[str]]) -> Path:
    proc = bench(
        "baseline", "record", "--profile", str(home / "tiny.toml"),
        "--runs-dir", str(home / "runs"), "--run-id", "rec",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "calibration: 2 noise seed(s) and 3 repeat(s) per cell" in proc.stdout
    (path,) = (home / "reports" / "baselines" / "tiny").glob("*.json")
    return path


def _verdicts(stdout: str) -> dict[str, str]:
    data = json.loads(stdout)
    return {c["cell_id"]: c["verdict"] for c in data["cells"]}


@pytest.mark.slow
def test_record_keeps_noise_seeds_repeats_and_the_thread_rule(recorded: Path, home: Path) -> None:
    base = baseline.load(recorded, profile="tiny")
    assert recorded.name == f"{base.key_id}.json" and reprokey.complete(base.key)
    assert base.key["threads.rule"] == "threads-v1" and base.key["threads.overrides"] is None
    assert sorted(c.cell_id for c in base.cells) == sorted(CELLS)  # noise cells kept apart
    for cid in CELLS:
        assert base.noise[cid].seeds == (1000, 2000)
        assert len(base.noise[cid].best_val_accuracy) == 2
        cell = base.cell(cid)
        assert cell is not None and cell.extra["repeats"]["repeats"] == 3
        assert cell.extra["repeats"]["weights_digests_identical"] is True  # deterministic
        plan = cell.extra["placement"]["thread_plan"]
        # the rule on this 32 px cell: well under one thread's worth of work per step
        assert plan["source"] == "rule" and plan["intra_op"] == 1 and plan["rule"] == "threads-v1"
        assert cell.extra["placement"]["threads"]["TF_NUM_INTRAOP_THREADS"] == "1"
    info = runfolder.read_run(home / "runs" / "rec")
    assert info.environment["thread_policy"]["rule"] == "threads-v1"


@pytest.mark.slow
def test_the_recorded_run_passes_its_own_baseline(recorded: Path, home: Path, bench) -> None:
    """Its noise-seed cells are calibration, not cells of the matrix: not judged, not new."""
    proc = bench("compare", str(home / "runs" / "rec"), "--json")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert _verdicts(proc.stdout) == {cid: "identical" for cid in CELLS}


@pytest.mark.slow
def test_identical_rerun_is_identical_and_no_improvement(recorded, home, bench) -> None:
    run = _all(bench, home, "rerun")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "exact tier: run key" in run.stdout
    proc = bench("compare", str(home / "runs" / "rerun"), "--json")
    assert proc.returncode == 0, proc.stdout[-3000:]
    data = json.loads(proc.stdout)
    assert data["tier"] == "exact" and data["counts"]["improvement"] == 0
    assert _verdicts(proc.stdout) == {cid: "identical" for cid in CELLS}
    assert data["compared"] == 2 and data["gate_line"] is None


@pytest.mark.slow
def test_one_line_numerics_change_is_changed_on_every_cell(recorded, home, bench) -> None:
    tree = inject.patched_copy(inject.NUMERICS_BUG, home / "injected")
    env = {"PYTHONPATH": str(tree)}
    run = bench(
        "all", "--profile", str(home / "tiny.toml"), "--runs-dir", str(home / "runs"),
        "--run-id", "numerics", cwd=tree, **env,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-2000:]
    proc = bench("compare", str(home / "runs" / "numerics"), "--json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["tier"] == "exact"
    assert _verdicts(proc.stdout) == {cid: "changed" for cid in CELLS}
    for c in data["cells"]:
        assert c["divergence"].startswith("first divergence: epoch 1 loss ")
    assert "FAIL" in data["summary"] and "2 changed" in data["summary"]


@pytest.mark.slow
def test_another_key_falls_to_the_statistical_tier_and_says_so(recorded, home, bench) -> None:
    run = _all(bench, home, "twothreads", TF_NUM_INTRAOP_THREADS="2")
    assert run.returncode in (0, 1), run.stdout[-3000:] + run.stderr[-2000:]
    proc = bench("compare", str(home / "runs" / "twothreads"), "--json")
    data = json.loads(proc.stdout)
    assert data["tier"] == "statistical"
    assert "no baseline for this run key" in data["selection"]
    assert any("threads.overrides" in d for d in data["key_differences"])
    for c in data["cells"]:
        assert c["tier"] == "statistical"
        acc = next(m for m in c["metrics"] if m["metric"] == "best val accuracy")
        assert 0 < acc["alpha"] < 0.01 and acc["se"] > 0  # a stated false-alarm rate
    assert any("quasi-binomial" in line for line in data["noise_models"])
    assert {m["metric"] for m in data["matrix_checks"]} == {"best val accuracy", "test accuracy"}
    # within noise on accuracy; throughput under a test suite's load may move either way,
    # so this asserts the accuracy verdicts only
    for c in data["cells"]:
        for m in c["metrics"]:
            if m["unit"] == "points":
                assert m["verdict"] == "within noise", (c["cell_id"], m)
    plan = runfolder.read_cells(home / "runs" / "twothreads")[0].extra["placement"]["thread_plan"]
    assert plan["source"] == "environment" and plan["intra_op"] == 2


@pytest.mark.slow
def test_a_gate_that_compared_nothing_does_not_pass(recorded, home, bench) -> None:
    if not (home / "runs" / "rerun" / "run.json").is_file():
        assert _all(bench, home, "rerun").returncode == 0
    # the baseline of the same run, with target_accuracy changed in every cell's config
    data = json.loads(recorded.read_text())
    for c in data["cells"]:
        c["config"]["target_accuracy"] = 0.7
    other = home / "other-target.json"
    other.write_text(json.dumps(data))
    proc = bench("compare", str(home / "runs" / "rerun"), "--baseline", str(other))
    assert proc.returncode == 4, proc.stdout[-3000:] + proc.stderr
    assert "NOT COMPARED" in proc.stdout.splitlines()[-1]
    gate = next(line for line in proc.stdout.splitlines() if line.startswith("GATE OFF"))
    assert "0 of 2 cells compared, 2 required" in gate
    assert "target_accuracy (2 cells)" in gate


def test_a_schema_1_baseline_is_read_and_upgraded() -> None:
    """The smoke baseline as the previous wave committed it (schema 1, no key, no noise)."""
    old = REPO / "tests" / "recorded" / "baseline-schema1-smoke.json"
    assert json.loads(old.read_text())["schema"] == 1
    base = baseline.load(old, profile="smoke")
    assert base.key == reprokey.run_key(base.environment)
    assert base.key["cpu.model"].startswith("AMD EPYC") and base.key["threads.rule"] is None
    assert not reprokey.complete(base.key)  # it predates the thread rule: never exact
    assert base.noise == {} and len(base.cells) == 12
    assert "no noise seeds and no repeats" in baseline.calibration(base)


def test_a_baseline_listing_a_cell_twice_is_refused(tmp_path: Path) -> None:
    old = json.loads((REPO / "tests" / "recorded" / "baseline-schema1-smoke.json").read_text())
    first = old["cells"][0]
    worse = {**first, "best_val_accuracy": 0.10}
    old["cells"].append(worse)
    path = tmp_path / "twice.json"
    path.write_text(json.dumps(old))
    with pytest.raises(InputError, match="is listed twice") as err:
        baseline.load(path)
    assert first["cell_id"] in err.value.message and "\n" not in err.value.message


# --- the noise arithmetic, against simulated noise of known size ------------------------


def test_quasi_binomial_phi_is_recovered_from_seed_samples() -> None:
    rng = random.Random(7)
    n, phi = 200, 3.0
    samples = []
    for p in (0.3, 0.55, 0.8, 0.9) * 6:
        sd = math.sqrt(phi * p * (1 - p) / n)
        samples.append(([min(1.0, max(0.0, rng.gauss(p, sd))) for _ in range(5)], n))
    model = noise.accuracy_model("best val accuracy", samples)
    assert model.df == 24 * 4 and model.cells == 24
    assert 2.0 < model.phi < 4.2


def test_stated_false_alarm_rate_holds_under_the_null() -> None:
    """Draw a baseline (5 seeds) and a run from one distribution, many times: the share of
    flagged runs is the per-test rate the allowance states (within Monte-Carlo error)."""
    rng = random.Random(11)
    n, p, phi, alpha = 200, 0.8, 2.0, 0.05
    model = noise.AccuracyModel("best val accuracy", phi, 10_000, 24, 5)  # phi known
    sd = math.sqrt(phi * p * (1 - p) / n)
    trials, flagged = 20_000, 0
    for _ in range(trials):
        base = [rng.gauss(p, sd) for _ in range(5)]
        run = rng.gauss(p, sd)
        allow = noise.accuracy_allowance(model, base, n, alpha, floor_points=0.0)
        # se uses the baseline mean's p: close to p here
        flagged += abs(100 * run - allow.center) > allow.limit
    assert abs(flagged / trials - alpha) < 0.01


def test_the_minimum_effect_floor_lowers_the_stated_rate() -> None:
    model = noise.AccuracyModel("best val accuracy", 1.0, 0, 0, 1)
    allow = noise.accuracy_allowance(model, [0.9], 10_000, 0.01, floor_points=5.0)
    assert allow.floor_binding and allow.limit == 5.0 and allow.alpha < 1e-6


def test_throughput_noise_is_robust_to_one_bad_night_and_symmetric() -> None:
    rng = random.Random(3)
    groups = [[1000 * math.exp(rng.gauss(0, 0.03)) for _ in range(5)] for _ in range(12)]
    clean = noise.throughput_model(groups)
    dirty = noise.throughput_model(groups, [[1000, 1010, 990, 400, 1005]])  # one bad night
    assert 0.02 < clean.sd < 0.045 and dirty.sd < clean.sd * 1.3
    # one limit on the log scale: a ratio and its inverse are equally far from "no change"
    from harness.analysis.compare import IMPROVEMENT, REGRESSION, _verdict

    allow = noise.throughput_allowance(clean, groups[0], [1000.0], 0.001, floor_relative=0.0)
    step = allow.limit * 1.01
    assert _verdict(-step, allow.limit) == REGRESSION
    assert _verdict(step, allow.limit) == IMPROVEMENT


def test_throughput_noise_between_sessions_comes_from_the_history() -> None:
    """Each session (the baseline's recording, each night) draws its own level per cell
    (SD 6 %) on top of process noise (SD 3 %): repeats of one recording see only the 3 %,
    so a band from them alone flags identical code far more often than it states; with
    the history's runs (one session each) the between-session part is measured and the
    stated rate holds (within Monte-Carlo error)."""
    rng = random.Random(5)
    s_w, s_b, cells, nights, alpha = 0.03, 0.06, 24, 10, 0.02

    def session(level: float, n: int) -> list[float]:
        shift = rng.gauss(0, s_b)
        return [math.exp(level + shift + rng.gauss(0, s_w)) for _ in range(n)]

    levels = [math.log(1000 + 100 * c) for c in range(cells)]
    base = [session(lv, 5) for lv in levels]
    history = [[session(lv, 1)[0] for _ in range(nights)] for lv in levels]
    within_only = noise.throughput_model(base)
    both = noise.throughput_model(base, history)
    assert within_only.between == 0 and "not measured" in within_only.describe()
    assert 0.045 < both.between < 0.08 and 0.02 < both.sd < 0.04
    assert "between sessions" in both.describe()
    flagged = {"within only": 0, "both": 0}
    trials = 0
    for _ in range(400):
        base = [session(lv, 5) for lv in levels]
        for lv, b in zip(levels, base, strict=True):
            run = session(lv, 1)
            trials += 1
            for name, model in (("within only", within_only), ("both", both)):
                allow = noise.throughput_allowance(model, b, run, alpha, floor_relative=0.0)
                flagged[name] += abs(math.log(run[0]) - allow.center) > allow.limit
    assert flagged["within only"] / trials > 5 * alpha
    assert abs(flagged["both"] / trials - alpha) < 0.015


def test_the_rate_is_split_between_families_and_sums_to_the_run_rate() -> None:
    counts = {"a": 24, "m": 2, "t": 24}
    per = noise.split(0.01, counts, {"a": 1.0, "m": 1.0, "t": 2.0})
    assert math.isclose(sum(per[f] * counts[f] for f in counts), 0.01)
    assert math.isclose(per["m"] * 2, 0.0025)
    assert noise.split(0.01, {"a": 0, "m": 0, "t": 4}, {"a": 1, "m": 1, "t": 2})["t"] == 0.0025


def test_thread_rule_is_measured_work_over_cores() -> None:
    from harness import threads

    small = threads.plan(image_size=32, alpha=0.35, batch_size=32, cores=16, environ={}, gpu=False)
    # one inter-op thread keeps a deterministic cell deterministic; without determinism,
    # inter-op threads use the cores
    assert small.intra_op == 1 and small.source == "rule" and small.inter_op == 1
    free = threads.plan(
        image_size=32, alpha=0.35, batch_size=32, deterministic=False, cores=16, environ={},
        gpu=False,
    )  # fmt: skip
    assert free.intra_op == 1 and free.inter_op == 16
    big = threads.plan(image_size=224, alpha=1.0, batch_size=64, cores=16, environ={}, gpu=False)
    assert big.intra_op == min(16, math.floor(300e6 * 64 / threads.MACS_PER_THREAD))
    capped = threads.plan(image_size=224, alpha=1.0, batch_size=64, cores=2, environ={}, gpu=False)
    assert capped.intra_op == 2
    given = threads.plan(
        image_size=32, alpha=0.35, batch_size=32, cores=2,
        environ={"TF_NUM_INTRAOP_THREADS": "2"}, gpu=False,
    )  # fmt: skip
    assert given.source == "environment" and given.intra_op == 2
    gpu = threads.plan(image_size=224, alpha=1.0, batch_size=64, cores=8, environ={}, gpu=True)
    assert gpu.intra_op is None and gpu.environment() == {}
    env: dict[str, str] = {}
    threads.apply(small, env)
    assert env["TF_NUM_INTRAOP_THREADS"] == env["OMP_NUM_THREADS"] == "1"


def test_each_backends_default_jit_compile_is_not_a_config_difference() -> None:
    """JAX always compiles, TensorFlow runs a graph: with nothing set in the profile a JAX
    run's cells record jit_compile True and the TensorFlow baseline's False. That is the
    backend's doing (the key already differs), so the pair is judged, not "not comparable"
    (every cell was, and a JAX run's gate compared nothing); a jit_compile the profile
    set against the backend's default, or within one backend, still differs."""
    from dataclasses import replace

    from harness.analysis.reprokey import cell_config_differences

    recorded = Path(__file__).resolve().parent / "recorded" / "run-1ed2cec"
    [tf] = runfolder.read_cells(recorded)

    def on(cell, backend: str, jit: bool):
        extra = {**cell.extra, "backend": {**cell.extra["backend"], "name": backend}}
        return replace(cell, config={**cell.config, "jit_compile": jit}, extra=extra)

    assert tf.extra["backend"]["name"] == "tensorflow" and tf.config["jit_compile"] is False
    assert cell_config_differences(tf, on(tf, "jax", True)) == []
    assert cell_config_differences(tf, on(tf, "jax", False)) == []  # same value: no difference
    assert cell_config_differences(on(tf, "tensorflow", True), on(tf, "jax", False)) == [
        "jit_compile"
    ]  # the profile set both against their backends' defaults
    assert cell_config_differences(tf, on(tf, "tensorflow", True)) == ["jit_compile"]
