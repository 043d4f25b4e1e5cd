"""`bench export mlflow` (and `bench all --mlflow`): a real local MLflow store, read back."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nightly
import pytest

from harness import runfolder
from harness.analysis import report
from harness.cli import main

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One night with a failed cell, its report written, and TensorBoard events of one cell."""
    cells = nightly.night_cells(0)
    tmp_path = tmp_path_factory.mktemp("mlflow-run")
    cells[1] = replace(
        cells[1], status="failed", error="RuntimeError: out of memory", history=(),
        train_throughput=None, inference_throughput=None, best_val_accuracy=None,
    )  # fmt: skip
    run = nightly.write_night(tmp_path / "reports" / "runs", 0, cells)
    report.write_report(run)
    tb = run / "tensorboard" / runfolder.cell_filename(nightly.STEP_CELL)[: -len(".json")] / "train"
    tb.mkdir(parents=True)
    (tb / "events.out.tfevents.1.host.1.v2").write_bytes(b"\x00" * 16)
    return run


def _client(uri: str):
    return mlflow.MlflowClient(tracking_uri=uri)


def test_export_round_trips_and_reexport_updates(run_dir: Path, tmp_path: Path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["export", "mlflow", str(run_dir), "--tracking-uri", uri])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "mlflow: 6 run(s) created, 0 updated in experiment 'transfer-bench-smoke'" in out

    client = _client(uri)
    exp = client.get_experiment_by_name("transfer-bench-smoke")
    assert exp is not None
    # Artifacts beside the database, not in the current folder.
    assert exp.artifact_location == (tmp_path / "mlartifacts").resolve().as_uri()
    runs = client.search_runs([exp.experiment_id])
    info = runfolder.read_run(run_dir)
    cells = {c.cell_id: c for c in runfolder.read_cells(run_dir)}
    assert sorted(r.data.tags["bench.cell_id"] for r in runs) == sorted(cells)
    by_cell = {r.data.tags["bench.cell_id"]: r for r in runs}

    r = by_cell[nightly.STEP_CELL]
    cell = cells[nightly.STEP_CELL]
    assert r.info.run_name == nightly.STEP_CELL and r.info.status == "FINISHED"
    assert r.data.tags["bench.run_id"] == info.run_id
    assert r.data.tags["mlflow.source.git.commit"] == info.git_commit
    assert r.data.tags["env.cpu.model"] == "AMD EPYC 7B13"
    assert r.data.tags["bench.lock_digest"] == "1" * 64
    assert r.data.params["strategy"] == "fine-tune" and r.data.params["batch_size"] == "32"
    assert r.data.params["learning_rate"] == "0.001"
    assert cell.train_throughput is not None
    assert r.data.metrics["train_images_per_s"] == pytest.approx(cell.train_throughput.images_per_s)
    assert r.data.metrics["best_val_accuracy"] == pytest.approx(cell.best_val_accuracy)
    history = client.get_metric_history(r.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (h.epoch, pytest.approx(h.val_accuracy)) for h in cell.history
    ]
    assert r.info.start_time == pytest.approx(
        __import__("datetime").datetime.fromisoformat(info.started_at).timestamp() * 1000
    )
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"cell", "run", "report", "tensorboard"} <= artifacts
    report_files = {a.path for a in client.list_artifacts(r.info.run_id, "report")}
    assert "report/report.md" in report_files and "report/plots" in report_files
    local = client.download_artifacts(r.info.run_id, "report/report.md", str(tmp_path / "dl"))
    assert Path(local).read_text() == (run_dir / "report" / "report.md").read_text()

    failed = by_cell["synth-few/feature-extract/float32/s0"]
    assert failed.info.status == "FAILED" and failed.data.tags["bench.status"] == "failed"
    assert "out of memory" in failed.data.tags["bench.error"]

    # Again, through the pipeline's path: same MLflow runs, no duplicated metric steps.
    from harness.exporters import mlflow as mlflow_export

    again = mlflow_export.export_run(run_dir, tracking_uri=uri)
    assert (len(again.created), len(again.updated)) == (0, 6)
    assert again.mlflow_run_ids[nightly.STEP_CELL] == r.info.run_id
    assert len(client.search_runs([exp.experiment_id])) == 6
    history = client.get_metric_history(r.info.run_id, "val_accuracy")
    assert len(history) == len(cell.history)
    assert len(client.get_metric_history(r.info.run_id, "train_images_per_s")) == 1


@pytest.mark.parametrize("store", ["sqlite", "folder"])
def test_bench_all_mlflow_flag_exports_at_the_end(
    run_dir: Path, tmp_path: Path, monkeypatch, capsys, store: str
):
    """`bench all --mlflow URI` ends with the export (the matrix run itself is stubbed out)."""
    from harness.commands import run as run_cmd

    monkeypatch.setattr(run_cmd, "_run", lambda args, matrix, cells, resume: (run_dir, 0))
    monkeypatch.setattr(run_cmd, "load_matrix", lambda profile: _Matrix())
    given = f"sqlite:///{tmp_path / 'all.db'}" if store == "sqlite" else str(tmp_path / "mlruns")
    uri = given if store == "sqlite" else f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    code = main(["all", "--mlflow", given, "--runs-dir", str(run_dir.parent)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.index("report: ") < out.index("history: ") < out.index("mlflow: 6 run(s) created")
    exp = _client(uri).get_experiment_by_name("transfer-bench-smoke")
    assert len(_client(uri).search_runs([exp.experiment_id])) == 6


# --- a local folder: MLflow's file store is legacy, local runs go to SQLite ---------------


@pytest.mark.parametrize(
    ("flag", "form"),
    [("--uri", "file-uri"), ("--tracking-uri", "plain-path")],
)
def test_export_to_a_local_folder(
    run_dir: Path, tmp_path: Path, monkeypatch, capsys, flag: str, form: str
):
    """Issue 16: `bench export mlflow RUN --uri file:///…/mlruns` exited 2 (MLflow's
    filesystem backend refuses). The folder now holds an SQLite store MLflow reads."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    folder = tmp_path / "mlruns"
    given = folder.as_uri() if form == "file-uri" else str(folder)
    code = main(["export", "mlflow", str(run_dir), flag, given])
    out, err = capsys.readouterr()
    assert code == 0, err
    db = f"sqlite:///{folder / 'mlflow.db'}"
    said = [line for line in out.splitlines() if "is a local folder" in line]
    assert said == [
        f"mlflow: {given} is a local folder: runs go to the SQLite store {db}, artifacts to "
        f"{folder / 'mlartifacts'} (current MLflow keeps local runs in SQLite; `mlflow ui "
        f"--backend-store-uri {db}` shows them)"
    ]
    assert f"mlflow: 6 run(s) created, 0 updated in experiment 'transfer-bench-smoke' ({db})" in out
    assert sorted(p.name for p in folder.iterdir()) == ["mlartifacts", "mlflow.db"]
    assert list(cwd.iterdir()) == []  # no ./mlruns, no ./mlflow.db

    # Read back by MLflow's own client, from the database in the folder.
    client = _client(db)
    exp = client.get_experiment_by_name("transfer-bench-smoke")
    assert exp.artifact_location == (folder / "mlartifacts").as_uri()
    runs = {r.data.tags["bench.cell_id"]: r for r in client.search_runs([exp.experiment_id])}
    cells = {c.cell_id: c for c in runfolder.read_cells(run_dir)}
    assert sorted(runs) == sorted(cells)
    run, cell = runs[nightly.STEP_CELL], cells[nightly.STEP_CELL]
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (h.epoch, pytest.approx(h.val_accuracy)) for h in cell.history
    ]
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(cell.best_val_accuracy)
    local = client.download_artifacts(run.info.run_id, "report/report.md", str(tmp_path / "dl"))
    assert Path(local).read_text() == (run_dir / "report" / "report.md").read_text()

    # The same folder again: the same store, updated in place.
    assert main(["export", "mlflow", str(run_dir), flag, given]) == 0
    assert "0 run(s) created, 6 updated" in capsys.readouterr().out
    assert len(client.search_runs([exp.experiment_id])) == 6


def test_a_folder_holding_a_file_store_is_refused_and_the_fix_works(
    run_dir: Path, tmp_path: Path, monkeypatch, capsys
):
    """An older MLflow's ./mlruns: refused in one line (its runs would drop out of sight),
    nothing written; the command it names (MLflow's migrate-filestore) then works, and
    MLFLOW_ALLOW_FILE_STORE=true, MLflow's own opt-in, is honoured."""
    folder = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    old = _client(str(folder))
    old_run = old.create_run(old.create_experiment("earlier-work")).info.run_id
    old.log_metric(old_run, "loss", 0.5)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    code = main(["export", "mlflow", str(run_dir), "--uri", str(folder)])
    err = capsys.readouterr().err
    db = f"sqlite:///{folder / 'mlflow.db'}"
    assert code == 2 and err.count("\n") == 1, err
    assert f"{folder} holds an MLflow file store" in err
    command = f"mlflow migrate-filestore --source {folder} --target {db}"
    assert command in err and "MLFLOW_ALLOW_FILE_STORE=true" in err
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before

    mlflow_cli = Path(sys.executable).with_name("mlflow")
    subprocess.run([str(mlflow_cli), *command.split()[1:]], check=True, capture_output=True)
    assert main(["export", "mlflow", str(run_dir), "--uri", db]) == 0
    client = _client(db)
    assert client.get_metric_history(old_run, "loss")[0].value == 0.5  # earlier work kept
    exp = client.get_experiment_by_name("transfer-bench-smoke")
    assert len(client.search_runs([exp.experiment_id])) == 6

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    legacy = tmp_path / "legacy"
    assert main(["export", "mlflow", str(run_dir), "--uri", str(legacy)]) == 0
    assert "is a local folder" not in capsys.readouterr().out
    exp = _client(str(legacy)).get_experiment_by_name("transfer-bench-smoke")
    assert len(_client(str(legacy)).search_runs([exp.experiment_id])) == 6
    assert not (legacy / "mlflow.db").exists()


class _Matrix:
    def select(self, only: object) -> tuple:
        return ()


def test_unreachable_server_is_one_line_exit_2(run_dir: Path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    code = main(["export", "mlflow", str(run_dir), "--tracking-uri", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "mlflow export of" in err and "http://127.0.0.1:9" in err


def test_missing_mlflow_says_install_the_extra(run_dir: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    code = main(["export", "mlflow", str(run_dir), "--tracking-uri", "sqlite:///x.db"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "install the mlflow extra" in err


def test_no_tracking_uri_is_bad_usage(run_dir: Path, capsys):
    code = main(["export", "mlflow", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "--tracking-uri" in err and "MLFLOW_TRACKING_URI" in err
