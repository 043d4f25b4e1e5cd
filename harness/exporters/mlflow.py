"""Export a run folder to MLflow: one MLflow run per cell, in one experiment per profile.

Each cell becomes an MLflow run (named by the cell id) holding:

* **params**: the resolved cell config, flattened to dotted keys (lists as JSON), plus the
  cell's dataset, strategy, precision, seed and backend;
* **metrics**: the per-epoch history with ``step = epoch`` (loss, accuracy, val_loss,
  val_accuracy, learning_rate, epoch_seconds) and the summary at step 0 (best/final val
  accuracy, test accuracy, train and inference images/s with their quartiles, peak memory in
  MiB, wall seconds, time to target);
* **tags**: ``bench.run_id``, ``bench.cell_id``, ``bench.profile``, ``bench.status`` (and
  the error of a failed cell), the git commit (``mlflow.source.git.commit``), the hardware
  identity and lock digest, and the environment fingerprint as ``env.<dotted key>`` (the
  installed-package list is summed up by ``env.packages_digest``);
* **artifacts**: the cell's result JSON, the run's ``run.json``, the run's report folder
  (``report.md`` and its plots) and the cell's TensorBoard events when present.

**Re-exporting updates, never duplicates**: runs are found by their ``bench.run_id`` and
``bench.cell_id`` tags before any is created; metrics already stored (same key, step and
value) are not logged again, params already set are kept, artifacts are overwritten in place.
Timestamps come from the run's start time, so an export is the same whenever it is made.

The experiment is ``transfer-bench-<profile>`` unless named. For an ``sqlite:///PATH`` store
the artifacts of a new experiment go to ``mlartifacts/`` beside the database (MLflow's own
default is relative to the current folder); a server (``http://host:5000``) stores them
where it was told to. ``mlflow`` is imported lazily: the core never needs it.

**A local folder** (a plain path such as ``./mlruns``, or a ``file:`` URI) is stored the way
current MLflow keeps local runs: in SQLite, ``sqlite:///<folder>/mlflow.db`` with artifacts
in ``<folder>/mlartifacts`` (:func:`resolve_tracking_uri`; the export says so in one line).
MLflow 3.7 made SQLite its default and refuses to write its legacy file store unless
``MLFLOW_ALLOW_FILE_STORE=true``, which is honoured: then the folder is used as a file
store. A folder that already holds a file store is refused (its runs would be left out of
sight), naming ``mlflow migrate-filestore``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from harness import env as env_mod
from harness import runfolder
from harness.analysis.compare import flatten
from harness.errors import InputError
from harness.history.index import hardware_label, lock_digest
from harness.results import CellResult, RunInfo

TAG_RUN = "bench.run_id"
TAG_CELL = "bench.cell_id"
INSTALL_HINT = "install the mlflow extra from uv.lock: . scripts/env.sh && ensure_env mlflow"
_BATCH = 100  # MLflow's limit of params + tags per log_batch call
# Environment keys too long or too many to be tags (summed up by packages_digest).
_ENV_SKIP_PREFIXES = ("packages.", "git_dirty_paths", "numpy.simd.")


@dataclass(frozen=True)
class ExportResult:
    """What one export did: where, and which cells were created or updated."""

    tracking_uri: str
    experiment: str
    experiment_id: str
    created: tuple[str, ...]
    updated: tuple[str, ...]
    mlflow_run_ids: dict[str, str]  # cell id -> MLflow run id
    notes: tuple[str, ...] = ()
    store_note: str | None = None  # how a folder given became the store (one line)

    def summary(self) -> str:
        text = (
            f"mlflow: {len(self.created)} run(s) created, {len(self.updated)} updated in "
            f"experiment {self.experiment!r} ({self.tracking_uri})"
        )
        store = [f"mlflow: {self.store_note}"] if self.store_note else []
        return "\n".join([*store, text, *(f"mlflow: note: {n}" for n in self.notes)])


def _import_mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise InputError(f"mlflow is not installed in this environment; {INSTALL_HINT}") from None
    return mlflow


_FILE_STORE_OPT_IN = "MLFLOW_ALLOW_FILE_STORE"  # MLflow's own switch back to its file store
DATABASE_NAME = "mlflow.db"
_SQLITE_HEADER = b"SQLite format 3\x00"


def _holds_file_store(folder: Path) -> bool:
    """True when ``folder`` holds MLflow file-store experiments (``<id>/meta.yaml``), the
    test MLflow itself uses to keep an existing ``./mlruns`` as its default."""
    try:
        return any(
            p.is_dir() and p.name.isdigit() and (p / "meta.yaml").exists() for p in folder.iterdir()
        )
    except OSError:
        return False


def _is_sqlite_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
    except OSError:
        return False


def resolve_tracking_uri(uri: str) -> tuple[str, str | None]:
    """(the URI MLflow is given for ``uri``, one line saying so when it differs).

    A server or database URI passes unchanged. A local path or ``file:`` URI names a folder
    (created if missing) whose store is ``sqlite:///<folder>/mlflow.db``, or an SQLite
    database file (an existing one, or a new name ending in ``.db``/``.sqlite``), as
    current MLflow keeps local runs; with ``MLFLOW_ALLOW_FILE_STORE=true`` a folder is
    MLflow's legacy file store, as asked. A folder that already holds a file store, or a
    file that is no database, is refused (InputError) with what to do.
    """
    text = uri.strip()
    parts = urlsplit(text)
    if text.lower().startswith("databricks") or (parts.scheme and parts.scheme != "file"):
        return uri, None
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InputError(
                f"MLflow tracking URI {uri!r}: a file: URI on another host ({parts.netloc!r}) "
                "is not a local folder; mount it, or run an MLflow server there"
            )
        path = Path(url2pathname(parts.path))
    else:
        path = Path(text)
    path = path.expanduser().absolute()
    if os.environ.get(_FILE_STORE_OPT_IN, "").strip().lower() in ("true", "1"):
        return uri, None  # the user asked MLflow for its file store
    if path.is_file() or (not path.exists() and path.suffix in (".db", ".sqlite", ".sqlite3")):
        if path.exists() and not _is_sqlite_file(path):
            raise InputError(
                f"MLflow tracking URI {uri!r}: {path} is a file but not an SQLite database; "
                "give a folder (its runs go to <folder>/mlflow.db) or a .db file"
            )
        return f"sqlite:///{path}", f"{uri} is an SQLite database file: runs go to sqlite:///{path}"
    if _holds_file_store(path):
        db = f"sqlite:///{path / DATABASE_NAME}"
        raise InputError(
            f"MLflow tracking URI {uri!r}: {path} holds an MLflow file store, which current "
            f"MLflow no longer writes; move its runs into SQLite with `mlflow migrate-filestore "
            f"--source {path} --target {db}` and export to {db}, or set "
            f"{_FILE_STORE_OPT_IN}=true to keep writing the file store"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"MLflow tracking URI {uri!r}: cannot create the folder {path}: {exc.strerror or exc}"
        ) from None
    db = f"sqlite:///{path / DATABASE_NAME}"
    return db, (
        f"{uri} is a local folder: runs go to the SQLite store {db}, artifacts to "
        f"{path / 'mlartifacts'} (current MLflow keeps local runs in SQLite; "
        f"`mlflow ui --backend-store-uri {db}` shows them)"
    )


def default_experiment(profile: str) -> str:
    return f"transfer-bench-{profile}"


def _millis(iso: str | None) -> int | None:
    if not iso:
        return None
    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cell_params(cell: CellResult, limit: int = 6000) -> dict[str, str]:
    """The resolved config as flat MLflow params (keys <= 250 characters)."""
    params = {k: _text(v, limit) for k, v in flatten(cell.config).items() if len(k) <= 250}
    for key in ("dataset", "strategy", "precision", "seed", "backend"):
        params.setdefault(key, _text(getattr(cell, key), limit))
    return params


def cell_metrics(cell: CellResult) -> list[tuple[str, float, int]]:
    """(key, value, step) of every finite metric of a cell: per epoch, then the summary."""
    out: list[tuple[str, float, int]] = []
    for h in cell.history:
        for key, value in (
            ("loss", h.loss),
            ("accuracy", h.accuracy),
            ("val_loss", h.val_loss),
            ("val_accuracy", h.val_accuracy),
            ("learning_rate", h.learning_rate),
            ("epoch_seconds", h.seconds),
        ):
            out.append((key, value, h.epoch))  # type: ignore[arg-type]
    summary: dict[str, Any] = {
        "best_train_accuracy": cell.best_train_accuracy,
        "best_val_accuracy": cell.best_val_accuracy,
        "final_val_accuracy": cell.final_val_accuracy,
        "test_accuracy": cell.test_accuracy,
        "time_to_target_s": cell.time_to_target_s,
        "epochs_to_target": cell.epochs_to_target,
        "peak_memory_mib": None
        if cell.peak_memory_bytes is None
        else cell.peak_memory_bytes / 2**20,
        "wall_seconds": cell.wall_seconds,
    }
    for phase, t in (("train", cell.train_throughput), ("inference", cell.inference_throughput)):
        if t is not None:
            summary[f"{phase}_images_per_s"] = t.images_per_s
            summary[f"{phase}_images_per_s_p25"] = t.images_per_s_p25
            summary[f"{phase}_images_per_s_p75"] = t.images_per_s_p75
    out += [(k, v, 0) for k, v in summary.items()]
    return [(k, float(v), s) for k, v, s in out if v is not None and math.isfinite(float(v))]


def cell_tags(info: RunInfo, cell: CellResult, limit: int = 8000) -> dict[str, str]:
    """Identity, status and the environment fingerprint as MLflow tags."""
    fp = info.environment if isinstance(info.environment, dict) else {}
    tags = {
        TAG_RUN: info.run_id,
        TAG_CELL: cell.cell_id,
        "bench.profile": info.profile,
        "bench.status": cell.status,
        "bench.started_at": info.started_at,
        "bench.hardware": hardware_label(env_mod.hardware_identity(fp)),
        "bench.lock_digest": lock_digest(fp) or "not recorded",
        "mlflow.source.git.commit": info.git_commit or "unknown",
    }
    if cell.error:
        tags["bench.error"] = _text(cell.error, limit)
    for key, value in flatten(fp).items():
        if not key.startswith(_ENV_SKIP_PREFIXES) and len(key) <= 245:
            tags[f"env.{key}"] = _text("null" if value is None else value, limit)
    return tags


_NO_URLS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


@contextmanager
def _quiet() -> Iterator[None]:
    """MLflow logs store migrations at INFO and prints two URLs per run it ends on a server;
    the export's one summary line is enough."""
    logger = logging.getLogger("mlflow")
    level, urls = logger.level, os.environ.get(_NO_URLS)
    logger.setLevel(logging.WARNING)
    os.environ[_NO_URLS] = "true"
    try:
        yield
    finally:
        logger.setLevel(level)
        if urls is None:
            os.environ.pop(_NO_URLS, None)
        else:
            os.environ[_NO_URLS] = urls


def _artifact_location(tracking_uri: str) -> str | None:
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def _experiment(client: Any, name: str, tracking_uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, artifact_location=_artifact_location(tracking_uri))
    if found.lifecycle_stage != "active":
        raise InputError(
            f"MLflow experiment {name!r} at {tracking_uri} is deleted; restore it "
            "(mlflow experiments restore) or pass --experiment NAME"
        )
    return found.experiment_id


def _find_run(client: Any, experiment_id: str, run_id: str, cell_id: str) -> Any | None:
    quoted_run, quoted_cell = run_id.replace("'", "\\'"), cell_id.replace("'", "\\'")
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_RUN}` = '{quoted_run}' and tags.`{TAG_CELL}` = '{quoted_cell}'",
        max_results=2,
    )
    return found[0] if found else None


def export_run(
    run_dir: Path,
    *,
    tracking_uri: str,
    experiment: str | None = None,
) -> ExportResult:
    """Log every cell of ``run_dir`` to MLflow at ``tracking_uri`` (see the module docstring)."""
    mlflow = _import_mlflow()
    from mlflow.exceptions import MlflowException

    run_dir = Path(run_dir)
    info = runfolder.read_run(run_dir)
    cells = runfolder.read_cells(run_dir)
    name = experiment or default_experiment(info.profile)
    store_uri, store_note = resolve_tracking_uri(tracking_uri)
    where = store_uri if store_uri == tracking_uri else f"{store_uri} (from {tracking_uri})"
    try:
        with _quiet():
            done = _export(mlflow, run_dir, info, cells, store_uri, name)
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"mlflow export of {run_dir} to {where} failed: {first[:300]}") from None
    return replace(done, store_note=store_note)


def _export(
    mlflow: Any,
    run_dir: Path,
    info: RunInfo,
    cells: list[CellResult],
    tracking_uri: str,
    name: str,
) -> ExportResult:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils import validation

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment(client, name, tracking_uri)
    start = _millis(info.started_at)
    end = _millis(info.finished_at) or start
    created: list[str] = []
    updated: list[str] = []
    notes: list[str] = []
    ids: dict[str, str] = {}
    param_limit = int(getattr(validation, "MAX_PARAM_VAL_LENGTH", 500))
    tag_limit = int(getattr(validation, "MAX_TAG_VAL_LENGTH", 5000))
    for cell in cells:
        tags = cell_tags(info, cell, tag_limit)
        existing = _find_run(client, experiment_id, info.run_id, cell.cell_id)
        if existing is None:
            run = client.create_run(
                experiment_id,
                start_time=start,
                tags={TAG_RUN: info.run_id, TAG_CELL: cell.cell_id},
                run_name=cell.cell_id,
            )
            run_id, old_params, old_metrics = run.info.run_id, {}, set()
            created.append(cell.cell_id)
        else:
            run_id = existing.info.run_id
            old_params = dict(existing.data.params)
            old_metrics = {
                (m.key, m.step, m.value)
                for key in existing.data.metrics
                for m in client.get_metric_history(run_id, key)
            }
            updated.append(cell.cell_id)
        ids[cell.cell_id] = run_id
        params = []
        for key, value in cell_params(cell, param_limit).items():
            if key not in old_params:
                params.append(Param(key, value))
            elif old_params[key] != value:
                notes.append(
                    f"{cell.cell_id}: param {key} is {old_params[key]!r} in MLflow and "
                    f"{value!r} in the run; MLflow params cannot change"
                )
        metrics = [
            Metric(key, value, (start or 0) + step, step)
            for key, value, step in cell_metrics(cell)
            if (key, step, value) not in old_metrics
        ]
        tag_list = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, max(len(params), len(tag_list), 1), _BATCH):
            client.log_batch(run_id, params=params[i : i + _BATCH], tags=tag_list[i : i + _BATCH])
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i : i + 1000])
        _log_artifacts(client, run_id, run_dir, cell)
        client.set_terminated(run_id, "FINISHED" if cell.ok else "FAILED", end_time=end)
    return ExportResult(
        tracking_uri, name, experiment_id, tuple(created), tuple(updated), ids, tuple(notes)
    )


def _log_artifacts(client: Any, run_id: str, run_dir: Path, cell: CellResult) -> None:
    client.log_artifact(run_id, str(runfolder.cell_path(run_dir, cell.cell_id)), "cell")
    client.log_artifact(run_id, str(run_dir / runfolder.RUN_JSON), "run")
    report_dir = runfolder.report_dir(run_dir)
    if (report_dir / runfolder.REPORT_NAME).is_file():
        client.log_artifacts(run_id, str(report_dir), "report")
    tb_dir = runfolder.tensorboard_dir(run_dir, cell.cell_id)
    if tb_dir.is_dir():
        client.log_artifacts(run_id, str(tb_dir), "tensorboard")
