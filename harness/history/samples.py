"""Recent throughput of the same cells on the same reproducibility key: the gate's history.

conbench gates a benchmark on a z-score against the last N runs of the same hardware;
:mod:`harness.analysis.compare` does the same with what this returns: for each cell of a run, the
train and inference images/s of the last ``limit`` runs of its profile on its run key
(:mod:`harness.analysis.reprokey`), with the same cell config, not dry runs, not measured while
cells shared the CPU, and not the run being judged. Read only: a missing or unreadable
index means no history (the baseline's repeats then carry the noise alone).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.analysis import reprokey

PHASE_METRICS: dict[str, str] = {
    "train": "train_images_per_s",
    "inference": "inference_images_per_s",
}
DEFAULT_LIMIT = 20


def throughput_samples(
    db_path: Path,
    *,
    profile: str,
    run_key_id: str,
    configs: Mapping[str, dict[str, Any]],
    exclude: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> dict[str, dict[str, list[float]]]:
    """cell id -> phase -> images/s of the last ``limit`` matching runs (oldest first)."""
    db_path = Path(db_path)
    if not db_path.is_file() or not configs:
        return {}
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return {}
    try:
        return _query(conn, profile, run_key_id, configs, exclude, limit)
    except (sqlite3.Error, ValueError):
        return {}
    finally:
        conn.close()


def _query(
    conn: sqlite3.Connection,
    profile: str,
    run_key_id: str,
    configs: Mapping[str, dict[str, Any]],
    exclude: str | None,
    limit: int,
) -> dict[str, dict[str, list[float]]]:
    rows = conn.execute(
        "SELECT r.folder, e.json FROM runs r JOIN environments e ON e.digest = r.environment "
        "WHERE r.profile = ? AND r.dry_run = 0 ORDER BY r.started_at DESC",
        (profile,),
    ).fetchall()
    folders = []
    for folder, env_json in rows:
        if folder == exclude:
            continue
        environment = json.loads(env_json)
        executor = environment.get("executor") or {}
        if isinstance(executor, dict) and executor.get("throughput_shared"):
            continue
        if reprokey.key_id(reprokey.run_key(environment)) != run_key_id:
            continue
        folders.append(folder)
        if len(folders) >= limit:
            break
    out: dict[str, dict[str, list[float]]] = {}
    for folder in reversed(folders):  # oldest first
        cells = conn.execute(
            "SELECT cell_id, config_json FROM cells WHERE folder = ? AND status = 'ok'", (folder,)
        ).fetchall()
        for cell_id, config_json in cells:
            want = configs.get(cell_id)
            if want is None or reprokey.config_differences(want, json.loads(config_json)):
                continue
            for phase, metric in PHASE_METRICS.items():
                got = conn.execute(
                    "SELECT value FROM metrics WHERE folder = ? AND cell_id = ? AND metric = ?",
                    (folder, cell_id, metric),
                ).fetchone()
                if got and got[0] > 0:
                    out.setdefault(cell_id, {}).setdefault(phase, []).append(float(got[0]))
    return out
