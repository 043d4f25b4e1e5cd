"""Where things live: the project root, the manifest, data caches and run reports.

The root is ``$BENCH_HOME`` when set, else the nearest folder upward from the
current directory that holds ``data/manifest.json``, else the current directory.
Caches default to folders under the root and can be moved with ``$BENCH_DATA_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The folder holding ``data/manifest.json``, ``benchmarks/`` and ``reports/``."""
    env = os.environ.get("BENCH_HOME")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "data" / "manifest.json").is_file():
            return folder
    return here


def manifest_path() -> Path:
    return project_root() / "data" / "manifest.json"


def data_dir() -> Path:
    """Root of fetched archives (``archives/``) and prepared caches (``prepared/``)."""
    env = os.environ.get("BENCH_DATA_DIR")
    return Path(env).resolve() if env else project_root() / "data"


def archives_dir() -> Path:
    return data_dir() / "archives"


def prepared_dir() -> Path:
    return data_dir() / "prepared"


def benchmarks_dir() -> Path:
    return project_root() / "benchmarks"


def reports_dir() -> Path:
    return project_root() / "reports"


def runs_dir() -> Path:
    return reports_dir() / "runs"


def baselines_dir() -> Path:
    return reports_dir() / "baselines"
