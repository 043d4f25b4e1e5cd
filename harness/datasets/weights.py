"""Pretrained weights files: where they are and whether they are what the manifest pins.

Weights shipped in the repository (``file`` source, under ``data/weights/``) are read in
place; weights with an ``https`` source are fetched by ``bench data fetch NAME`` into the
archives folder. Either way :func:`check_weights` re-checks size and sha256: the pre-flight
of ``bench all`` (a mismatch is an input error before any cell starts), and
:func:`resolve_weights` in the cell that loads them.
"""

from __future__ import annotations

from pathlib import Path

from harness import paths
from harness.datasets.hashing import verify_file
from harness.errors import InputError, IntegrityError
from harness.manifest import FileSource, WeightsEntry, load_manifest


def weights_path(entry: WeightsEntry) -> Path:
    """Where the weights file of ``entry`` lives (or will live once fetched)."""
    if isinstance(entry.source, FileSource):
        return paths.project_root() / entry.source.path
    return paths.archives_dir() / entry.source.filename


def check_weights(entry: WeightsEntry, *, allow_unpinned: bool, manifest_path: Path) -> Path:
    """The local file of ``entry``, present, pinned (unless ``allow_unpinned``) and matching
    its pinned size and hashes; an InputError naming the file and what to do otherwise."""
    name = entry.name
    path = weights_path(entry)
    if not path.is_file():
        if isinstance(entry.source, FileSource):
            raise InputError(
                f"weights {name!r}: {path} is missing from the repository (manifest "
                f"weights.{name}.source.path); restore it from git or rebuild it"
            )
        raise InputError(
            f"weights {name!r} are not fetched ({path}): run `bench data fetch {name}`"
        )
    if not entry.sha256 and not allow_unpinned:
        raise IntegrityError(
            f"weights {name!r} are unpinned (no sha256 in {manifest_path}): run "
            f"`bench data pin {name}` after checking the file, or pass --allow-unpinned"
        )
    verify_file(
        path,
        what=f"weights {name!r}",
        size=entry.size,
        sha256=entry.sha256,
        md5=getattr(entry.source, "md5", None),
        hint=f"run `bench data fetch {name}` again"
        if not isinstance(entry.source, FileSource)
        else f"the shipped file changed (or its pin in {manifest_path} did); restore it "
        f"with `git checkout -- {entry.source.path}`, or re-pin it with `bench data pin {name}`",
    )
    return path


def resolve_weights(name: str, *, allow_unpinned: bool = False) -> Path:
    """The verified local weights file of manifest weights entry ``name``."""
    manifest = load_manifest()
    return check_weights(
        manifest.weight(name), allow_unpinned=allow_unpinned, manifest_path=manifest.path
    )
