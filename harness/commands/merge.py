"""``bench merge RUN... --out RUN``: shard runs (``bench all --shard i/n``) as one run.

The shards must be runs of the same profile and matrix, from the same code revision and
the same lock digest (else one line naming the first that differs, exit 2): only then is
the merged run one run that compares and reports like any other. Each input's cells,
repeats, logs and TensorBoard files are copied into the new run folder (a cell in two
inputs is refused unless both files are byte-identical); ``run.json`` is the first
input's, with every input's cell ids, the earliest start, the latest finish and
``matrix.merged_from`` (each input's run id and shard). The inputs are not changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path
from typing import Any

from harness import fsio, paths, results, runfolder
from harness.commands import options
from harness.errors import EXIT_OK, InputError

COPIED = (runfolder.CELLS, runfolder.REPEATS, runfolder.LOGS, runfolder.TENSORBOARD)


def register(sub: Any) -> None:
    p = sub.add_parser("merge", help="combine shard runs (bench all --shard i/n) into one run")
    p.add_argument("runs", nargs="+", help="run folders, or run ids under --runs-dir")
    p.add_argument("--out", required=True, help="the merged run: a folder, or a run id")
    options.runs_dir(p)
    p.set_defaults(func=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    runs_dir = Path(args.runs_dir) if args.runs_dir else paths.runs_dir()
    inputs = [runfolder.locate(r, runs_dir) for r in args.runs]
    out = runfolder.locate(args.out, runs_dir)
    merged = merge(inputs, out)
    print(f"merged {len(inputs)} runs ({len(merged.cell_ids)} cells) -> {out}")
    return EXIT_OK


def _lock(info: results.RunInfo) -> Any:
    return (info.environment.get("lock") or {}).get("digest")


def check_compatible(infos: list[tuple[Path, results.RunInfo]]) -> None:
    """One line naming the first input that differs from the first in profile, matrix,
    dry run, code revision or lock digest."""
    (p0, a), rest = infos[0], infos[1:]
    for p, b in rest:
        for what, get in (
            ("profile", lambda i: i.profile),
            ("code revision", lambda i: i.git_commit),
            ("lock digest", _lock),
            ("dry run", lambda i: bool(i.matrix.get("dry_run"))),
        ):
            if get(a) != get(b):
                raise InputError(
                    f"bench merge: {p} has {what} {get(b)!r}, {p0} has {get(a)!r}; only shards "
                    "of one run (same profile, code revision and lock) merge"
                )
        if a.matrix.get("cells") != b.matrix.get("cells"):
            raise InputError(
                f"bench merge: {p} ran another matrix of profile {a.profile!r} than {p0}; "
                "only shards of one run merge"
            )


def merge(inputs: list[Path], out: Path) -> results.RunInfo:
    """Merge the runs in ``inputs`` into the new run folder ``out`` (see the module doc)."""
    if len(set(map(str, inputs))) != len(inputs):
        raise InputError("bench merge: a run is named twice")
    infos = []
    for path in inputs:
        if not runfolder.is_run(path):
            raise InputError(f"bench merge: {path} is not a run folder (no run.json)")
        infos.append((path, runfolder.read_run(path)))
    check_compatible(infos)
    if out.exists():
        raise InputError(f"bench merge: --out {out} already exists; choose another")
    unfinished = [str(p) for p, i in infos if not i.finished_at]
    if unfinished:
        raise InputError(
            f"bench merge: {unfinished[0]} did not finish; complete it with "
            "`bench all --resume` first"
        )
    files: dict[str, Path] = {}
    owner: dict[str, Path] = {}
    for path, _ in infos:
        for top in COPIED:
            for src in sorted((path / top).rglob("*")) if (path / top).is_dir() else ():
                if not src.is_file():
                    continue
                rel = str(src.relative_to(path))
                if rel in files and fsio.read_bytes(files[rel]) != fsio.read_bytes(src):
                    raise InputError(
                        f"bench merge: {rel} is in both {owner[rel]} and {path}, and differs; "
                        "merge shards of one run, each once"
                    )
                files[rel], owner[rel] = src, path
    first = infos[0][1]
    ids = tuple(dict.fromkeys(cid for _, i in infos for cid in i.cell_ids))
    order = {_cell_id(c): n for n, c in enumerate(first.matrix.get("cells") or [])}
    matrix = {k: v for k, v in first.matrix.items() if k != "shard"}
    matrix["merged_from"] = [{"run_id": i.run_id, "shard": i.matrix.get("shard")} for _, i in infos]
    info = dataclasses.replace(
        first,
        run_id=out.name,
        matrix=matrix,
        cell_ids=tuple(sorted(ids, key=lambda c: order.get(c, len(order)))),
        started_at=min(i.started_at for _, i in infos),
        finished_at=max(str(i.finished_at) for _, i in infos),
    )
    with fsio.guard(out, "create"):
        out.mkdir(parents=True)
    for rel, src in files.items():
        dst = out / rel
        with fsio.guard(dst, "write"):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    _merge_processes(inputs, out)
    runfolder.write_run(out, info)
    return info


def _cell_id(spec: dict[str, Any]) -> str | None:
    from harness.matrix import CellSpec

    try:
        return CellSpec(**spec).cell_id
    except TypeError:  # a matrix written by another version: keep the inputs' order
        return None


def _merge_processes(inputs: list[Path], out: Path) -> None:
    rows: list[Any] = []
    for path in inputs:
        try:
            rows += runfolder.read_processes(path)
        except InputError:
            continue
    runfolder.write_processes(out, rows)
