"""JAX, first-class: the smoke matrix on JAX, TensorFlow-free JAX cells, backends side by
side, and the GPU check's CPU dry run.

- ``bench all --profile smoke --backend jax``: every cell ok, on JAX with ``jax.jit``, and
  each cell's best validation and test accuracy within the profile's tolerance of the same
  cell in the session's TensorFlow smoke run (``smoke_run_dir``);
- ``bench compare JAX_RUN --baseline TF_RUN`` (a run folder as the baseline): the two runs
  side by side per strategy; a run with two backends gets that section in its report;
- a JAX cell in a process where TensorFlow cannot be imported (as on the GPU machines)
  runs, and nothing on its path imported TensorFlow;
- ``scripts/gpu-check.sh OUT --cpu-dry-run``: every phase, summary.json and summary.md.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import runkit

from harness import backend, gpucheck, results, runfolder
from harness.analysis import crossbackend, findings, report
from harness.matrix import load_matrix

REPO = Path(__file__).resolve().parent.parent
Run = Callable[..., subprocess.CompletedProcess[str]]

# Python that makes TensorFlow (and tf_keras) look not installed in the process it runs in.
HIDE_TENSORFLOW = """
class _HideTensorFlow:
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] in ('tensorflow', 'tf_keras'):
            return None
        return self.finder.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.finder, attr)
sys.meta_path[:] = [_HideTensorFlow(f) for f in sys.meta_path]
"""

pytestmark = pytest.mark.skipif(
    not backend.installed("jax"), reason="JAX is not installed here (the lock's `jax` extra)"
)


@pytest.fixture(scope="module")
def jax_smoke_run_dir(tmp_path_factory: pytest.TempPathFactory, run_bench: Run) -> Path:
    """One ``bench all --profile smoke --backend jax`` (with the end-of-run comparison
    against the stored TensorFlow baseline and the report)."""
    runs = tmp_path_factory.mktemp("jax-smoke-runs")
    proc = run_bench(
        "all", "--profile", "smoke", "--backend", "jax", "--runs-dir", str(runs),
        "--run-id", "smoke-jax", timeout=3600,
    )  # fmt: skip
    run_dir = runs / "smoke-jax"
    if not (run_dir / "run.json").is_file():
        pytest.fail(f"no JAX smoke run (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    (run_dir / "bench-all.out").write_text(proc.stdout + proc.stderr)
    return run_dir


@pytest.mark.slow
def test_jax_smoke_matrix_every_cell_ok(jax_smoke_run_dir: Path) -> None:
    cells = runfolder.read_cells(jax_smoke_run_dir)
    assert len(cells) == len(load_matrix("smoke").cells) == 12
    bad = {c.cell_id: c.error for c in cells if not c.ok}
    assert not bad, bad
    for c in cells:
        assert c.backend == "jax" and c.extra["backend"]["jit_compile"] is True
        assert c.config["jit_compile"] is True
        assert c.extra["compile"]["observed"]["xla_compile_requests"] > 0
        assert "host max rss" in c.peak_memory_kind


def did_not_learn(cell: results.CellResult) -> str | None:
    """Why ``cell`` counts as not having learned
    (:func:`harness.analysis.findings.chance_check`), or None when it learned (or cannot say)."""
    check = findings.chance_check(cell)
    return None if check is None or check.learned else findings.did_not_learn_note(check)


@pytest.mark.slow
def test_jax_accuracy_within_the_seed_noise_of_tensorflow(
    jax_smoke_run_dir: Path, smoke_run_dir: Path, run_bench: Run
) -> None:
    """Each smoke cell on JAX against TensorFlow, as the gate's statistical tier judges it.

    The same seed draws different random numbers on each backend (Keras's generators are
    the backend's own), so the head's initial weights, the flips and the shuffles differ: a
    JAX cell is the TensorFlow cell at another seed, plus XLA's numerics. Two seeds of one
    backend differ by up to 10.5 points on this recipe (synth-xray full-fine-tune: test
    72.0 / 82.5 / 76.5 % for seeds 0 / 1 / 2), far beyond the profile's minimum effect, so
    the measure is the committed TensorFlow baseline's seed noise (its noise seeds, the
    quasi-binomial model of :mod:`harness.analysis.noise`), through ``bench compare``:

    - every cell with pretrained weights learned on both backends (a backend fault, such
      as BatchNorm in the wrong mode, costs tens of points and lands near chance);
    - a cell that did not learn on either side is named, not judged: its accuracy there
      is chance plus noise (the smoke's scratch recipe does not learn reliably);
    - no judged cell's accuracy outside its prediction interval, and the matrix-wide
      checks (a systematic shift between the backends) within noise.
    """
    jax_cells = runfolder.read_cells(jax_smoke_run_dir)
    tf_cells = runfolder.read_cells(smoke_run_dir)
    pairs = crossbackend.between_runs(jax_cells, tf_cells, run_id="jax", base_run_id="tensorflow")
    assert len(pairs) == 12 and all(p.ok for p in pairs)
    sides = {
        "tensorflow": {crossbackend.cell_key(c): c for c in tf_cells},
        "jax": {crossbackend.cell_key(c): c for c in jax_cells},
    }
    idle = {
        p.key: {b: why for b, cells in sides.items() if (why := did_not_learn(cells[p.key]))}
        for p in pairs
    }
    pretrained = {k for k, c in sides["tensorflow"].items() if c.config.get("weights") != "none"}
    assert not {k: v for k, v in idle.items() if v and k in pretrained}, idle
    print("not judged (did not learn):", json.dumps({k: v for k, v in idle.items() if v}))
    proc = run_bench("compare", str(jax_smoke_run_dir), "--json", "--accuracy-only")
    data = json.loads(proc.stdout)
    assert data["tier"] == "statistical", data["summary"]  # another backend: another key
    idle_ids = {c.cell_id for c in jax_cells if idle[crossbackend.cell_key(c)]}
    flagged = {
        c["cell_id"]: [(m["metric"], m["verdict"], m["change"], m["allowed"]) for m in bad]
        for c in data["cells"]
        if c["cell_id"] not in idle_ids
        and (
            bad := [
                m for m in c["metrics"] if m["unit"] == "points"
                and m["verdict"] in ("regression", "improvement")
            ]
        )
    }  # fmt: skip
    print(
        "TF -> JAX accuracy:", json.dumps({c["cell_id"]: c["metrics"][:2] for c in data["cells"]})
    )
    assert not flagged, flagged
    # A systematic shift between the backends: Stouffer's z over the cells that learned
    # (the gate's matrix-wide check, without the chance-level cells), at the gate's limit.
    for check in data["matrix_checks"]:
        standardised = [
            m["change"] / m["se"]
            for c in data["cells"]
            if c["cell_id"] not in idle_ids
            for m in c["metrics"]
            if m["metric"] == check["metric"] and m.get("se")
        ]
        z = sum(standardised) / math.sqrt(len(standardised))
        assert abs(z) <= check["limit"], (check["metric"], z, check["limit"])


@pytest.mark.slow
def test_compare_with_a_run_folder_puts_backends_side_by_side(
    jax_smoke_run_dir: Path, smoke_run_dir: Path, run_bench: Run
) -> None:
    proc = run_bench("compare", str(jax_smoke_run_dir), "--baseline", str(smoke_run_dir))
    # Judged in the statistical tier (each backend's default jit_compile is not a config
    # difference): a scratch cell that learned on one side only may fail it (exit 1).
    assert proc.returncode in (0, 1) and "statistical tier" in proc.stdout, proc.stderr
    assert "Side by side:" in proc.stdout
    for strategy in ("scratch", "feature-extract", "fine-tune", "full-fine-tune"):
        assert "tensorflow (smoke) -> jax (smoke-jax)" in proc.stdout
        assert strategy in proc.stdout
    data = json.loads(
        run_bench(
            "compare", str(jax_smoke_run_dir), "--baseline", str(smoke_run_dir), "--json"
        ).stdout
    )
    assert len(data["backends"]) == 12
    # The end of `bench all --backend jax`: against the stored (TensorFlow) baseline, the
    # report shows the two backends side by side.
    text = (jax_smoke_run_dir / "report" / "report.md").read_text()
    assert "## Backends side by side" in text and "tensorflow (" in text


def test_a_run_with_two_backends_reports_them_side_by_side(tmp_path: Path) -> None:
    tf = runkit.standard_cells()
    jx = [
        replace(c, cell_id=c.cell_id + "/jax", backend="jax",
                       best_val_accuracy=c.best_val_accuracy - 0.02)
        for c in tf
    ]  # fmt: skip
    run_dir = runkit.write_run(tmp_path, [*tf, *jx], run_id="mixed")
    text = report.write_report(run_dir).read_text()
    assert "## Backends side by side" in text
    section = text[text.index("## Backends side by side") :]
    assert "| fine-tune " in section and "tensorflow -> jax" in section
    assert "-2.00" in section  # the accuracy delta, in points
    assert "6 of 6 within the profile's ±2 points" in section
    assert "synth-few (jax)" in text  # the results matrix has one row per dataset and backend


@pytest.mark.slow
def test_a_jax_cell_runs_where_tensorflow_cannot_be_imported(tmp_path: Path) -> None:
    """As on the GPU machines (JAX and torch, no TensorFlow): every ``sys.meta_path`` finder
    is wrapped so that it finds no ``tensorflow``/``tf_keras``; ``import tensorflow`` then
    raises ModuleNotFoundError and ``find_spec`` reports it absent, and nothing is put in
    ``sys.modules``, exactly as where it is not installed.

    Not ``sys.modules['tensorflow'] = None``: Keras's ``in_tf_graph()`` (called by every
    preprocessing layer, e.g. the flip augmentation) asks ``"tensorflow" in sys.modules``,
    which that entry makes true, then imports it and fails ("Unable to automatically build
    the model ... This requires the tensorflow module"), a failure no machine without
    TensorFlow has."""
    cell = {
        "dataset": "tiny", "strategy": "two-stage", "precision": "float32", "seed": 0,
        "image_size": 32, "alpha": 0.35, "weights": "none", "batch_size": 8, "epochs": 2,
        "head_epochs": 1, "dense_units": 16, "steps_per_epoch": 2, "warmup_steps": 1,
        "inference_batch": 8, "inference_steps": 2, "inference_warmup": 1,
        "input": "synthetic", "num_classes": 3, "augmentation": "flip",
    }  # fmt: skip
    code = (
        "import sys, json, importlib.util\n"
        f"{HIDE_TENSORFLOW}"
        "assert importlib.util.find_spec('tensorflow') is None\n"
        "from harness.cell import process as cellproc\n"
        f"rc = cellproc.main(['--cell-json', {json.dumps(json.dumps(cell))}, "
        f"'--run-dir', {str(tmp_path)!r}, '--backend', 'jax'])\n"
        "loaded = sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('tensorflow', 'tf_keras'))\n"
        "print('@@modules', json.dumps({'rc': rc, 'tensorflow_modules': loaded}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "BENCH_HOME": str(REPO)},
    )  # fmt: skip
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@modules ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    found = json.loads(line[-1].split(" ", 1)[1])
    res = runfolder.read_cell(tmp_path / "cells" / "tiny__two-stage-random__float32__s0.json")
    assert found["rc"] == 0 and res.ok, res.error
    assert found["tensorflow_modules"] == []
    assert res.extra["tensorboard"]["status"] == "unavailable"
    assert res.backend == "jax"


def test_gpu_check_profiles(tmp_path: Path) -> None:
    """The GPU check's smoke is the smoke matrix at float32 and mixed_bfloat16 (derived from
    benchmarks/smoke.toml, so it cannot drift); its throughput matrices are 224 px, alpha
    1.0, batch 128, XLA on (the backend's default: jax.jit) and off."""
    smoke = load_matrix("smoke")
    gpu_smoke = load_matrix(str(gpucheck.derived_profile(
        "smoke", tmp_path, "smoke", {}, {"precisions": ["float32", "mixed_bfloat16"]}
    )))  # fmt: skip
    assert gpu_smoke.profile == "smoke" and gpu_smoke.tolerances == smoke.tolerances
    assert [c for c in gpu_smoke.cells if c.precision == "float32"] == list(smoke.cells)
    bf16 = [c for c in gpu_smoke.cells if c.precision == "mixed_bfloat16"]
    assert [replace(c, precision="float32") for c in bf16] == list(smoke.cells)
    thr, noxla = load_matrix("gpu-throughput"), load_matrix("gpu-throughput-noxla")
    assert len(thr.cells) == 18 and [c.cell_id for c in thr.cells] == [
        c.cell_id for c in noxla.cells
    ]
    for c in thr.cells:
        assert (c.image_size, c.alpha, c.batch_size, c.jit_compile) == (224, 1.0, 128, None)
    assert all(c.jit_compile is False for c in noxla.cells)


@pytest.mark.slow
def test_gpu_check_cpu_dry_run(tmp_path: Path, bench_env: dict[str, str]) -> None:
    out = tmp_path / "gpu"
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-check.sh"), str(out), "--cpu-dry-run",
         "--no-install", "--python", sys.executable, "--budget-s", "3000"],
        cwd=REPO, env=bench_env, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "transfer-bench.gpu-check" and summary["mode"] == "cpu-dry-run"
    assert [p["name"] for p in summary["phases"]] == [
        "warm-up",
        "throughput-xla",
        "smoke",
        "throughput-noxla",
    ]
    assert all(p["status"] == "complete" for p in summary["phases"])
    thr = {(r["strategy"], r["precision"]): r for r in summary["throughput_xla"]}
    assert ("full-fine-tune-random", "mixed_bfloat16") in thr
    assert thr[("full-fine-tune-random", "float32")]["jit_compile"] is True
    assert "speedup_over_float32" in thr[("full-fine-tune-random", "mixed_bfloat16")]
    assert summary["throughput_noxla"][0]["jit_compile"] is False
    assert summary["xla_on_vs_off"] and len(summary["smoke"]) == 2
    assert "# GPU check (cpu-dry-run)" in (out / "summary.md").read_text()
    for phase in summary["phases"]:
        for run_dir in phase["run_dirs"]:
            assert (Path(run_dir) / "report" / "report.md").is_file()
