"""Output paths a user names are never overwritten unless bench wrote them, and an output
stream that went away ends the command quietly (issue 18).

Every case runs the real CLI in a subprocess against real files: the repository's own
manifest and a baseline (copies), an SQLite database of another program, a folder of the
user's, /dev/null, /dev/full and a closed stdout.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import runkit
from conftest import BENCH, REPO

from harness import outputs
from harness.history import index

Run = Callable[..., subprocess.CompletedProcess[str]]
RUN = "20261124-070000-smoke"


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A runs folder holding one run."""
    runkit.write_run(tmp_path, runkit.standard_cells(), run_id=RUN)
    return tmp_path / "reports" / "runs"


@pytest.fixture
def user(tmp_path: Path) -> dict[str, Path]:
    """Files and folders that are the user's: copies of real ones, and another program's."""
    home = tmp_path / "mine"
    home.mkdir()
    manifest = home / "manifest.json"
    shutil.copy(REPO / "data" / "manifest.json", manifest)
    baseline = home / "smoke.json"
    shutil.copy(REPO / "tests" / "recorded" / "baseline-schema1-smoke.json", baseline)
    db = home / "notes.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.execute("INSERT INTO notes (text) VALUES ('keep me')")
    conn.commit()
    conn.close()
    folder = home / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("do not delete")
    return {"manifest": manifest, "baseline": baseline, "sqlite": db, "folder": folder}


def snapshot(*paths: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for path in paths:
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        found.update({str(p): p.read_bytes() for p in files if p.is_file()})
    return found


# command line (split on spaces, then filled in) -> the user's thing it names
CASES: dict[str, str] = {
    "history --runs-dir {runs} --db {manifest}": "manifest",
    "history --runs-dir {runs} --db {baseline}": "baseline",
    "history --runs-dir {runs} --db {sqlite} --rebuild": "sqlite",
    "history --runs-dir {runs} --db {folder}": "folder",
    "dashboard --runs-dir {runs} --out {site} --db {manifest}": "manifest",
    "dashboard --runs-dir {runs} --out {folder}": "folder",
    "dashboard --runs-dir {runs} --out {manifest}": "manifest",
    "report {runs}/{run} --out {folder}": "folder",
    "ab no-such-revision --record {baseline}": "baseline",  # refused before git runs
    "export mlflow {runs}/{run} --tracking-uri sqlite:///{sqlite}": "sqlite",
    "export mlflow {runs}/{run} --tracking-uri {folder}": "folder",
    "all --dry-run --only {cell} --runs-dir {runs} --mlflow sqlite:///{manifest}": "manifest",
    "pretrain no-such-weights --out {manifest}": "manifest",  # refused before the lookup
}


@pytest.mark.parametrize("command", CASES)
def test_an_output_path_that_is_not_ours_is_refused_untouched(
    run_bench: Run, runs: Path, user: dict[str, Path], command: str
) -> None:
    before = snapshot(*user.values(), runs)
    site = runs.parent / "site"
    fill = {"runs": runs, "run": RUN, "site": site, "cell": "synth-few/scratch/float32/s0"}
    argv = [part.format(**fill, **user) for part in command.split()]
    proc = run_bench(*argv, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    line = one_line(proc.stderr)
    assert line.startswith("bench: error: --"), line
    assert f"{user[CASES[command]]}" in line and "exists and is not" in line, line
    assert "left untouched" in line, line
    assert snapshot(*user.values(), runs) == before  # not a byte changed anywhere
    assert not site.exists()


def test_a_device_is_not_a_history_index(run_bench: Run, runs: Path, tmp_path: Path) -> None:
    """``--db /dev/null``: an atomic replace would put a regular file in the device's place
    (as root, for every process on the machine). Named here through a link of our own, so
    that even a harness that got this wrong replaces only the link, never /dev/null."""
    device = tmp_path / "device"
    device.symlink_to(os.devnull)
    proc = run_bench("history", "--runs-dir", str(runs), "--db", str(device))
    assert proc.returncode == 2, proc.stdout
    assert f"{device}: exists and is not a history index" in one_line(proc.stderr)
    assert "not a regular file" in proc.stderr
    assert device.is_symlink() and Path(os.devnull).is_char_device()


def test_our_own_outputs_are_updated_and_recognised(
    run_bench: Run, runs: Path, tmp_path: Path
) -> None:
    """New paths, empty files and earlier outputs of bench are accepted as before."""
    db = tmp_path / "index.sqlite"
    for _ in range(2):  # created, then recognised and updated
        proc = run_bench("history", "--runs-dir", str(runs), "--db", str(db))
        assert proc.returncode == 0, proc.stderr
    assert index.index_problem(db) is None
    proc = run_bench("history", "--runs-dir", str(runs), "--db", str(db), "--rebuild")
    assert proc.returncode == 0, proc.stderr
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    proc = run_bench("history", "--runs-dir", str(runs), "--db", str(empty))
    assert proc.returncode == 0 and index.index_problem(empty) is None, proc.stderr
    # An index from before the kind was recorded in its meta table is still ours.
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM meta WHERE key = 'kind'")
    conn.commit()
    conn.close()
    assert index.index_problem(db) is None
    # The dashboard: a new folder, then the same folder again (an earlier dashboard).
    site = tmp_path / "site"
    for _ in range(2):
        proc = run_bench("dashboard", "--runs-dir", str(runs), "--out", str(site), "--db", str(db))
        assert proc.returncode == 0, proc.stderr
    # A report into a new folder, then again into the same one.
    out = tmp_path / "report"
    for _ in range(2):
        proc = run_bench("report", str(runs / RUN), "--out", str(out))
        assert proc.returncode == 0, proc.stderr
    assert outputs.refusal(out, outputs.REPORT) is None


def test_the_default_index_path_is_ours_and_rebuilt(runs: Path) -> None:
    """``<runs-dir>/.history.sqlite`` is a name of ours: garbage there is rebuilt (a cache)."""
    default = runs / index.DB_NAME
    default.write_bytes(b"not a database" * 10)
    assert index.update_index(runs).rebuilt
    assert index.index_problem(default) is None


def test_output_kinds_match_what_their_writers_stamp(tmp_path: Path) -> None:
    from harness import ab, jsonio, pretrain
    from harness.dashboard import site

    assert site.MARKER == outputs.DASHBOARD_MARKER
    for output, kind in [
        (outputs.AB_RECORD, ab.AB_KIND),
        (outputs.PRETRAIN_SIDECAR, pretrain.SIDECAR_KIND),
    ]:
        path = tmp_path / "written.json"
        jsonio.write_json(path, {}, kind=kind, schema=99)  # another version: still ours
        assert outputs.refusal(path, output) is None, output
        jsonio.write_json(path, {}, kind="transfer-bench.baseline", schema=1)
        assert "kind 'transfer-bench.baseline'" in str(outputs.refusal(path, output))


# --- output streams ----------------------------------------------------------------------


@pytest.mark.parametrize("args", [["list"], ["list", "--json"]])
def test_a_full_stdout_ends_quietly(bench_env: dict[str, str], args: list[str]) -> None:
    """``bench list > /dev/full``: the output cannot be written; it ends like a closed pipe."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [*BENCH, *args], cwd=REPO, env=bench_env, stdout=full, stderr=subprocess.PIPE
        )
    assert (proc.returncode, proc.stderr.decode()) == (141, "")


@pytest.mark.parametrize("args", [["list"], ["list", "--json"]])
def test_a_stdout_closed_before_the_start_ends_quietly(
    bench_env: dict[str, str], args: list[str]
) -> None:
    """``bench list >&-``."""
    proc = subprocess.run(
        [*BENCH, *args],
        cwd=REPO,
        env=bench_env,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(1),
    )
    assert (proc.returncode, proc.stderr.decode()) == (141, "")


def test_a_closed_stdout_never_lands_on_a_file_we_write(
    bench_env: dict[str, str], runs: Path, tmp_path: Path
) -> None:
    """With fd 1 closed, the first file opened would get it; /dev/null is put there first,
    so the index written by ``bench history >&-`` is an index, not a log of our output."""
    db = tmp_path / "index.sqlite"
    proc = subprocess.run(
        [*BENCH, "history", "--runs-dir", str(runs), "--db", str(db)],
        cwd=REPO,
        env=bench_env,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(1),
    )
    assert (proc.returncode, proc.stderr.decode()) == (141, "")
    assert index.index_problem(db) is None
