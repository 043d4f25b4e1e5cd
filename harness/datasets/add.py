"""``bench data add``: a folder or archive of images becomes a pinned, validated manifest entry.

The input (a folder, a tar or zip archive, or an https URL of one) is copied into the
archives folder and hashed: a folder is packed into a reproducible tar first
(:mod:`.pack`), so it is pinned like any archive. The archive is extracted within the
usual bounds, then inspected as an ``image-folders`` layout:

- split folders are found at the top or under one wrapping folder: ``train``, ``val``
  (also ``valid``, ``validation``) and ``test``; a folder of class folders only is the
  ``train`` split;
- classes are the train split's sub-folders, at least two of them, the same in every
  split; every file must be an image Pillow can identify, within the decompression-bomb
  limit (the first that is not is named: by its path in the given folder, or as a member
  of the given archive, never by the temporary extraction);
- platform metadata (``__MACOSX/``, ``._*``, ``.DS_Store``, ``Thumbs.db``,
  ``desktop.ini``) is left out when the folder is packed or the archive extracted, and
  counted (:attr:`Added.ignored`);
- a missing ``val`` split is carved out of train by ``val_from_train`` (per class, a
  fraction or a count, seeded), and refused without one: every cell validates on val.

The entry gets the class names, split counts, channels (1 when every image is grayscale),
the archive's sha256 and size, and a regime: the one given, or one derived by the
report's rule (train images < ``small_train_images`` → small; grayscale → a domain
different from the colour images the weights were trained on) and marked ``derived``.
The manifest is rewritten atomically, and validated before it is; an existing name is
refused unless ``force``. Nothing is left behind by a refusal.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harness.datasets import archives, extract, layouts
from harness.datasets.fetch import Pins, copy_local, download
from harness.datasets.hashing import FileDigest
from harness.datasets.platform_meta import is_platform_metadata
from harness.errors import InputError
from harness.manifest import (
    MANIFEST,
    MANIFEST_KIND,
    MANIFEST_SCHEMA,
    MIN_CLASSES,
    DatasetEntry,
    load_manifest,
    parse_manifest,
)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
GRAY_MODES = ("1", "L", "LA", "La", "I;16", "I;16B", "I;16L", "I;16N", "I", "F")


@dataclass(frozen=True)
class Added:
    """What ``bench data add`` wrote."""

    name: str
    entry: dict[str, Any]
    archive: Path
    manifest: Path
    ignored: tuple[str, ...] = ()  # platform metadata files left out (names in the input)


def parse_val_from_train(text: str) -> dict[str, Any]:
    """``0.1`` → ``{"fraction": 0.1}``; ``5`` → ``{"count": 5}`` (per class)."""
    try:
        if re.fullmatch(r"\d+", text):
            return {"count": int(text), "seed": 0}
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise InputError(
            f"--val-from-train {text!r}: expected a fraction per class (0 < x < 1, e.g. 0.1) "
            "or a count per class (e.g. 5)"
        )
    return {"fraction": value, "seed": 0}


def parse_regime(text: str) -> dict[str, str]:
    """``data=small,domain=similar`` → ``{"data": "small", "domain": "similar"}``."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("data", "domain"):
            raise InputError(
                f"--regime {text!r}: expected data=small|big and/or domain=similar|different"
            )
        out[key.strip()] = value.strip()
    return out


def _visible(p: Path) -> bool:
    return not p.name.startswith(".") and not is_platform_metadata(p.name)


def _dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def find_splits(top: Path) -> tuple[str, dict[str, str]]:
    """(root relative to ``top``, split → folder name) of an image-folders tree."""
    level = top
    while True:
        subs = _dirs(level)
        named: dict[str, str] = {}
        for sub in subs:
            split = SPLIT_NAMES.get(sub.name.lower())
            if split is None:
                continue
            if split in named:
                raise InputError(
                    f"{level}: both {named[split]!r} and {sub.name!r} look like the {split} "
                    "split; keep one"
                )
            named[split] = sub.name
        files = [p for p in level.iterdir() if p.is_file() and _visible(p)]
        if named:
            break
        if len(subs) == 1 and not files:
            level = subs[0]
            continue
        named = {"train": "."}  # a folder of class folders: all of it is train
        break
    rel = level.relative_to(top).as_posix()
    return rel, named


def _check_images(root: Path, splits: dict[str, str], shown: Callable[[Path], str]) -> int:
    """Every file under the split folders is an identifiable image within the
    decompression-bomb limit; returns channels (1|3). Errors name files by ``shown``."""
    from PIL import UnidentifiedImageError

    from harness.datasets.decode import ImageTooLarge, open_image

    gray = True
    for folder in splits.values():
        for path in sorted((root / folder).rglob("*")):
            rel = path.relative_to(root / folder)
            if not path.is_file() or not all(_visible(Path(part)) for part in rel.parts):
                continue
            if len(rel.parts) == 1:
                continue  # a file beside the class folders: the layout ignores it
            try:
                with open_image(path, shown(path)) as im:
                    gray = gray and im.mode in GRAY_MODES
            except ImageTooLarge as exc:
                raise InputError(f"{exc.message}; remove it and add the dataset again") from None
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                why = "not an image" if isinstance(exc, UnidentifiedImageError) else str(exc)
                raise InputError(
                    f"{shown(path)}: {why}; remove it (or move it out of the class folders) "
                    "and add the dataset again"
                ) from None
    return 1 if gray else 3


def _regime(
    given: dict[str, str], train: int, channels: int, small_train_images: int
) -> dict[str, str]:
    derived = {
        "data": "small" if train < small_train_images else "big",
        "domain": "different" if channels == 1 else "similar",
    }
    why = {
        "data": f"{train} train images {'<' if train < small_train_images else '>='} "
        f"{small_train_images}",
        "domain": f"{channels} channel(s)",
    }
    regime = {**derived, **given}
    guessed = [k for k in ("data", "domain") if k not in given]
    if guessed:
        regime["derived"] = (
            "bench data add: "
            + "; ".join(f"{k}={derived[k]} from {why[k]}" for k in guessed)
            + " (declare it with --regime data=small|big,domain=similar|different)"
        )
    return regime


def _stage_input(
    source: str, name: str, staged_dir: Path, ignored: list[str]
) -> tuple[dict[str, Any], Path, str]:
    """(source JSON without pins, staged file, archive file name) of the input; a folder's
    platform metadata files, left out of its tar, go to ``ignored``."""
    if re.match(r"^[a-z]+://", source):
        parts = urlsplit(source)
        filename = Path(parts.path).name or f"{name}.archive"
        staged = staged_dir / filename
        download(source, staged, Pins(), what=f"dataset {name!r}")
        return {"type": "https", "url": source, "filename": filename}, staged, filename
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"--from {source}: no such file or folder")
    filename = f"{name}.tar" if path.is_dir() else path.name
    staged = staged_dir / filename
    copy_local(path, staged, Pins(), what=f"dataset {name!r}", ignored=ignored)
    return {"type": "local", "filename": filename}, staged, filename


def _given_folder(source: str) -> Path | None:
    """The folder ``--from`` names, if it names one."""
    if re.match(r"^[a-z]+://", source):
        return None
    path = Path(source).expanduser()
    return path if path.is_dir() else None


def _namer(source: str, extracted: Path) -> Callable[[Path], str]:
    """How errors name a file of the extracted input: by its path in the folder given, or
    as a member of the archive given; never by the temporary extraction."""
    folder = _given_folder(source)
    if folder is not None:
        return lambda p: str(folder / p.relative_to(extracted))
    return lambda p: f"member {p.relative_to(extracted).as_posix()!r} of {source}"


def _unstaged(message: str, source: str, work: Path, staged: Path | None) -> str:
    """``message`` with the temporary staging paths replaced by what the user gave."""
    folder = _given_folder(source)
    extracted = work / "extracted"
    message = message.replace(f"{extracted}/", f"{folder}/" if folder else f"{source}:")
    message = message.replace(str(extracted), str(folder or source))
    if staged is not None:
        message = message.replace(str(staged), str(folder or source))
    return message


def add_dataset(
    name: str,
    source: str,
    *,
    layout: str = "image-folders",
    val_from_train: dict[str, Any] | None = None,
    regime: dict[str, str] | None = None,
    force: bool = False,
    small_train_images: int = 4000,
) -> Added:
    """Inspect ``source`` and write the manifest entry ``name`` (module doc)."""
    if not NAME.match(name):
        raise InputError(f"dataset name {name!r}: use letters, digits, '.', '_' and '-' only")
    if layout != "image-folders":
        raise InputError(
            f"--layout {layout!r}: `bench data add` reads image-folders trees "
            "(split/class/image); write other layouts into the manifest by hand"
        )
    manifest = load_manifest()
    if (name in manifest.datasets or name in manifest.weights) and not force:
        raise InputError(
            f"{name!r} is already in {manifest.path}: pick another name, or pass --force to "
            "replace it"
        )
    folder = archives.extracted_dir(name).parent
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.add-", dir=folder))
    staged: Path | None = None
    ignored: list[str] = []
    try:
        src_json, staged, filename = _stage_input(source, name, work, ignored)
        for other in manifest.datasets.values():
            if other.name != name and getattr(other.source, "filename", None) == filename:
                raise InputError(
                    f"archive name {filename!r} is already used by dataset {other.name!r}; "
                    "rename the file (or pick another dataset name for a folder)"
                )
        extracted = extract.safe_extract(staged, work / "extracted", ignored=ignored)
        root, split_dirs = find_splits(extracted)
        root_path = extracted / root
        channels = _check_images(root_path, split_dirs, _namer(source, extracted))
        if "val" in split_dirs and val_from_train:
            raise InputError(
                f"{source}: has a val split ({split_dirs['val']!r}); drop --val-from-train"
            )
        if "val" not in split_dirs and not val_from_train:
            found = ", ".join(sorted(split_dirs)) or "none"
            raise InputError(
                f"{source}: no val split (found: {found}), and every cell validates on val: "
                "pass --val-from-train 0.1 (a seeded per-class carve of train)"
            )
        layout_json: dict[str, Any] = {"format": "image-folders"}
        if root not in ("", "."):
            layout_json["root"] = root
        layout_json["splits"] = split_dirs
        splits = list(split_dirs)
        if val_from_train:
            layout_json["val_from_train"] = val_from_train
            splits.insert(1, "val")
        got = _digest(staged)
        entry_json: dict[str, Any] = {
            "description": f"Added by `bench data add` from {source}.",
            "source": {**src_json, "size": got.size, "sha256": got.sha256},
            "layout": layout_json,
            "classes": {"count": MIN_CLASSES},  # a stand-in: the folders give the classes
            "channels": channels,
            "splits": dict.fromkeys(splits, 0),
            "prepared": {},
        }
        plan = layouts.image_folders(_entry(manifest, name, entry_json), extracted)
        if len(plan.class_names) < MIN_CLASSES:
            where = (root_path / split_dirs["train"]).relative_to(extracted).as_posix()
            raise InputError(
                f"{source}: {len(plan.class_names)} class folder(s) in {where!r} "
                f"({', '.join(plan.class_names)}), and a classifier needs at least "
                f"{MIN_CLASSES}: put each class's images in a folder of its own and add the "
                "dataset again"
            )
        entry_json["classes"] = list(plan.class_names)
        entry_json["splits"] = {s: len(plan.splits[s]) for s in splits}
        entry_json["regime"] = _regime(
            regime or {}, entry_json["splits"]["train"], channels, small_train_images
        )
        entry = _entry(manifest, name, entry_json)
        raw = MANIFEST.read(manifest.path)
        raw.setdefault("datasets", {})[name] = entry_json
        parse_manifest(raw, manifest.path)
        dest = archives.archive_path(entry.source)  # type: ignore[arg-type]
        _swap_folder(extracted, archives.extracted_dir(name))
        os.replace(staged, dest)
        archives.write_record(entry, dest, "extracted", digest=got)
        MANIFEST.write(manifest.path, raw)
        return Added(name, entry_json, dest, manifest.path, tuple(ignored))
    except InputError as exc:
        if str(work) not in exc.message:
            raise
        raise InputError(_unstaged(exc.message, source, work, staged)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _digest(path: Path) -> FileDigest:
    from harness.datasets.hashing import hash_file

    return hash_file(path)


def _entry(manifest: Any, name: str, entry_json: dict[str, Any]) -> DatasetEntry:
    """The typed entry, validated as the manifest parser validates it."""
    raw = {"kind": MANIFEST_KIND, "schema": MANIFEST_SCHEMA, "datasets": {name: entry_json}}
    return parse_manifest(raw, manifest.path).datasets[name]


def _swap_folder(new: Path, final: Path) -> None:
    """Put ``new`` at ``final``, an older ``final`` moved aside first, then removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old / final.name)
        os.replace(new, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, final)
