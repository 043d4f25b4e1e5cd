"""History and dashboard cost over 60 nights: index from scratch, no-op update, trends, site.

Run: ``.venv/bin/pytest benchmarks/bench_history.py --benchmark-only -s``. The nights are
synthetic run folders (six cells each, a 30 % train-throughput step at night 40) written
with :mod:`harness.results`, as ``bench all`` writes them; the figures are printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness import history
from harness.dashboard import build_site

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import nightly

NIGHTS = 60


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("nights") / "runs"
    nightly.write_history(folder, nights=NIGHTS, step_at=40, factor=0.7)
    return folder


def test_index_from_scratch(benchmark, runs: Path, tmp_path: Path):
    counter = iter(range(1000))

    def index() -> history.IndexUpdate:
        return history.update_index(runs, tmp_path / f"h{next(counter)}.sqlite")

    update = benchmark.pedantic(index, rounds=3, iterations=1)
    assert len(update.added) == NIGHTS
    print(f"\nindex {NIGHTS} nights from scratch: {benchmark.stats['median']:.3f} s (median of 3)")


def test_noop_update_and_trends(benchmark, runs: Path):
    history.update_index(runs)

    def update_and_query() -> list[history.Series]:
        history.update_index(runs)
        conn = history.connect(history.default_db_path(runs))
        try:
            return history.query(conn)
        finally:
            conn.close()

    series = benchmark.pedantic(update_and_query, rounds=3, iterations=1)
    assert sum(len(s.steps) for s in series) == 1
    print(
        f"\nno-op update + {len(series)} series with step detection over {NIGHTS} nights: "
        f"{benchmark.stats['median']:.3f} s (median of 3)"
    )


def test_dashboard(benchmark, runs: Path, tmp_path: Path):
    site = benchmark.pedantic(lambda: build_site(tmp_path / "site", runs), rounds=1, iterations=1)
    size = (site.index_html).stat().st_size
    print(
        f"\ndashboard of {NIGHTS} nights x 6 cells: {benchmark.stats['median']:.1f} s, "
        f"index.html {size / 2**20:.2f} MiB"
    )
