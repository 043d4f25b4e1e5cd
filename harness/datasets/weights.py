"""Pretrained weights files: where they are and whether they are what the manifest pins.

Weights shipped in the repository (``file`` source, under ``data/weights/``) are read in
place; weights with an ``https`` source are fetched by ``bench data fetch NAME`` into the
archives folder. Either way :func:`resolve_weights` re-checks size and sha256.
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


def resolve_weights(name: str, *, allow_unpinned: bool = False) -> Path:
    """The verified local weights file of manifest weights entry ``name``."""
    manifest = load_manifest()
    entry = manifest.weight(name)
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
            f"weights {name!r} are unpinned (no sha256 in {manifest.path}): run "
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
        else "the shipped file changed; restore it or re-pin it",
    )
    return path
