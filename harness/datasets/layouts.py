"""Layout readers: what images each split holds, with labels, read from a fetched source.

Each reader turns a manifest entry's ``layout`` into a :class:`Plan` — class names plus,
per split, a list of image files or an in-archive array — and checks it against the
manifest (class names or count, split sizes) before anything is decoded. Layouts:
``image-folders`` (split/class/file, optionally carving ``val`` out of ``train`` by the
seeded ``layout.val_from_train`` rule), ``cub-200-2011`` (the Caltech index files), ``npz``
(MedMNIST arrays) and derived subsets (``source.type == "derived"``) that select files
of their parent by the manifest's rule. Every path a layout names is resolved and must
stay inside the dataset's own extracted folder. Hidden entries (a leading ``.``) and
platform metadata (``__MACOSX/``, ``Thumbs.db``…, :mod:`.platform_meta`) are neither
classes nor images.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.datasets import archives
from harness.datasets.platform_meta import is_platform_metadata
from harness.errors import InputError
from harness.manifest import DatasetEntry, DerivedSource, Manifest


@dataclass(frozen=True)
class FileSplit:
    """A split made of image files and their labels (same order)."""

    files: tuple[Path, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class ArraySplit:
    """A split held as an array inside an ``.npz`` file."""

    npz: Path
    images_key: str
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Plan:
    class_names: tuple[str, ...]
    splits: dict[str, FileSplit | ArraySplit]


def read_plan(entry: DatasetEntry, manifest: Manifest, *, allow_unpinned: bool = False) -> Plan:
    """The checked plan of ``entry``: its classes and, per split, what to decode."""
    if isinstance(entry.source, DerivedSource):
        parent = manifest.dataset(entry.source.parent)
        plan = derive(entry, read_plan(parent, manifest, allow_unpinned=allow_unpinned))
    else:
        root = archives.source_root(entry, allow_unpinned=allow_unpinned)
        fmt = entry.layout.get("format")
        readers = {"image-folders": image_folders, "cub-200-2011": cub_200_2011, "npz": npz}
        if fmt not in readers:
            raise InputError(
                f"dataset {entry.name!r}: unknown layout.format {fmt!r} "
                f"(known: {', '.join(readers)})"
            )
        plan = readers[fmt](entry, root)
    _check_counts(entry, plan)
    return plan


def _check_counts(entry: DatasetEntry, plan: Plan) -> None:
    if len(plan.class_names) != entry.num_classes:
        raise InputError(
            f"dataset {entry.name!r}: found {len(plan.class_names)} classes, the manifest "
            f"says {entry.num_classes}"
        )
    for split, count in entry.splits.items():
        got = len(plan.splits[split])
        if got != count:
            raise InputError(
                f"dataset {entry.name!r} split {split!r}: found {got} images, the manifest "
                f"says {count}"
            )


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and not is_platform_metadata(path.name)


def _descend(root: Path, expected: list[str]) -> Path:
    """``root``, or its single subfolder when the archive wraps everything in one folder."""
    if any((root / e).exists() for e in expected):
        return root
    subs = [p for p in root.iterdir() if p.is_dir() and _visible(p)]
    if len(subs) == 1:
        return _descend(subs[0], expected)
    return root


def _compare_classes(entry: DatasetEntry, where: Path, found: list[str]) -> None:
    expected = set(entry.class_names or ())
    missing = sorted(expected - set(found))
    extra = sorted(set(found) - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"not in the manifest {extra[:5]}{'…' if len(extra) > 5 else ''}")
        raise InputError(
            f"dataset {entry.name!r}: class folders in {where} disagree with the manifest's "
            f"class names: {'; '.join(parts)}"
        )


def _contained(entry: DatasetEntry, top: Path, rel: str, what: str) -> Path:
    """``top / rel``, refused when it resolves (links included) outside ``top``."""
    path = top / rel
    if not path.resolve().is_relative_to(top.resolve()):
        raise InputError(
            f"dataset {entry.name!r}: {what} {rel!r} leads outside the dataset's folder {top}"
        )
    return path


def image_folders(entry: DatasetEntry, root: Path) -> Plan:
    """``<root>/<split folder>/<class>/<image>``; split folders named by ``layout.splits``.

    With ``layout.val_from_train`` the ``val`` split is carved out of ``train`` per class
    (:func:`carve_val`) instead of read from a folder.
    """
    carve = entry.layout.get("val_from_train")
    wanted = [s for s in entry.splits if not (carve and s == "val")]
    split_dirs: dict[str, str] = entry.layout.get("splits") or {s: s for s in wanted}
    missing = [s for s in wanted if s not in split_dirs]
    if missing:
        raise InputError(f"dataset {entry.name!r}: layout.splits has no folder for {missing}")
    top = root
    if entry.layout.get("root"):
        root = _contained(entry, top, entry.layout["root"], "layout.root")
    else:
        root = _descend(root, [split_dirs[s] for s in wanted])
    class_names = entry.class_names
    splits: dict[str, FileSplit] = {}
    for split in wanted:
        folder = _contained(entry, top, str((root / split_dirs[split]).relative_to(top)), "split")
        if not folder.is_dir():
            raise InputError(f"dataset {entry.name!r}: split folder {folder} is missing")
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and _visible(p))
        if class_names is None:
            class_names = tuple(classes)
        elif entry.class_names is not None:
            _compare_classes(entry, folder, classes)
        elif set(classes) != set(class_names):
            diff = sorted(set(classes) ^ set(class_names))
            raise InputError(
                f"dataset {entry.name!r}: class folders in {folder} differ from the first "
                f"split's: {diff[:5]}"
            )
        files: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(class_names):
            class_dir = folder / name
            found = sorted(p for p in class_dir.iterdir() if _visible(p) and not p.is_dir())
            if not found:
                raise InputError(f"dataset {entry.name!r}: class folder {class_dir} is empty")
            files += found
            labels += [label] * len(found)
        splits[split] = FileSplit(tuple(files), np.asarray(labels, dtype=np.int32))
    assert class_names is not None
    if carve:
        splits["train"], splits["val"] = carve_val(entry, splits["train"], class_names, carve)
        splits = {s: splits[s] for s in entry.splits}
    return Plan(tuple(class_names), splits)


def carve_val(
    entry: DatasetEntry, train: FileSplit, class_names: tuple[str, ...] | list[str], rule: dict
) -> tuple[FileSplit, FileSplit]:
    """(train without val, val): per class, ``count`` files or ``round(fraction × n)`` (>= 1).

    Each class draws its own picks from ``default_rng([seed, crc32(class name)])``, so the
    same rule gives the same split on every machine, and adding a class moves no other.
    """
    seed = int(rule.get("seed", 0))
    keep = np.ones(len(train), dtype=bool)
    for label, name in enumerate(class_names):
        members = np.flatnonzero(train.labels == label)
        n = len(members)
        if "count" in rule:
            k = int(rule["count"])
        else:
            k = max(1, int(float(rule["fraction"]) * n + 0.5))
        if k >= n:
            raise InputError(
                f"dataset {entry.name!r}: class {name!r} has {n} training image(s); "
                f"layout.val_from_train takes {k} for val and would leave none to train on"
            )
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        keep[members[rng.choice(n, size=k, replace=False)]] = False
    files = np.asarray(train.files, dtype=object)
    return (
        FileSplit(tuple(files[keep]), train.labels[keep]),
        FileSplit(tuple(files[~keep]), train.labels[~keep]),
    )


def _index(path: Path) -> dict[int, str]:
    """A CUB index file: ``<id> <value>`` per line."""
    if not path.is_file():
        raise InputError(f"CUB-200-2011 index file {path} is missing")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not key.isdigit() or not value:
            raise InputError(f"{path}: line {n} is not '<id> <value>': {line[:60]!r}")
        out[int(key)] = value
    return out


def cub_200_2011(entry: DatasetEntry, root: Path) -> Plan:
    """Caltech's index files; ``val_per_class`` training images per class become val."""
    base = _contained(entry, root, entry.layout.get("root", "CUB_200_2011"), "layout.root")
    classes = _index(base / "classes.txt")
    images = _index(base / "images.txt")
    labels = {k: int(v) for k, v in _index(base / "image_class_labels.txt").items()}
    is_train = {k: v == "1" for k, v in _index(base / "train_test_split.txt").items()}
    class_ids = sorted(classes)
    class_names = tuple(classes[c].split(".", 1)[-1] for c in class_ids)
    if entry.class_names is not None:
        _compare_classes(entry, base / "classes.txt", list(class_names))
        class_names = entry.class_names
    by_id = {c: class_names.index(classes[c].split(".", 1)[-1]) for c in class_ids}
    for image_id in images:
        if image_id not in labels or image_id not in is_train:
            raise InputError(f"{base}: image id {image_id} has no class label or split entry")
    train_ids = sorted(i for i in images if is_train[i])
    test_ids = sorted(i for i in images if not is_train[i])
    val_per_class = int(entry.layout.get("val_per_class", 0))
    rng = np.random.default_rng(int(entry.layout.get("val_seed", 0)))
    val_set: set[int] = set()
    for c in class_ids:
        members = [i for i in train_ids if labels[i] == c]
        if len(members) < val_per_class:
            raise InputError(
                f"dataset {entry.name!r}: class {classes[c]!r} has {len(members)} training "
                f"images, fewer than val_per_class={val_per_class}"
            )
        picks = rng.choice(len(members), size=val_per_class, replace=False)
        val_set.update(members[int(p)] for p in picks)
    split_ids = {
        "train": [i for i in train_ids if i not in val_set],
        "val": sorted(val_set),
        "test": test_ids,
    }
    splits = {}
    for split in entry.splits:
        if split not in split_ids:
            raise InputError(f"dataset {entry.name!r}: CUB-200-2011 has no split {split!r}")
        ids = split_ids[split]
        splits[split] = FileSplit(
            tuple(base / "images" / images[i] for i in ids),
            np.asarray([by_id[labels[i]] for i in ids], dtype=np.int32),
        )
    return Plan(tuple(class_names), splits)


def npz(entry: DatasetEntry, path: Path) -> Plan:
    """MedMNIST-style ``.npz``: per split an images array (N×H×W[×C]) and labels (N or N×1)."""
    keys: dict[str, list[str]] = entry.layout.get("splits") or {
        s: [f"{s}_images", f"{s}_labels"] for s in entry.splits
    }
    class_names = entry.class_names or tuple(str(i) for i in range(entry.num_classes))
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"dataset {entry.name!r}: {path} is not a readable .npz ({exc})") from None
    splits = {}
    with archive:
        for split in entry.splits:
            images_key, labels_key = keys[split]
            for key in (images_key, labels_key):
                if key not in archive.files:
                    raise InputError(
                        f"dataset {entry.name!r}: {path} has no array {key!r} "
                        f"(has: {', '.join(archive.files)})"
                    )
            labels = np.asarray(archive[labels_key]).reshape(-1).astype(np.int32)
            bad = labels[(labels < 0) | (labels >= len(class_names))]
            if bad.size:
                raise InputError(
                    f"dataset {entry.name!r}: {path}:{labels_key} holds label {int(bad[0])} "
                    f"outside 0…{len(class_names) - 1}"
                )
            splits[split] = ArraySplit(path, images_key, labels)
    return Plan(tuple(class_names), splits)


def _take(rule_value: object, split: str, entry: DatasetEntry) -> int | None:
    """None for "all", else a per-class count."""
    if rule_value in (None, "all"):
        return None
    if isinstance(rule_value, int) and not isinstance(rule_value, bool) and rule_value > 0:
        return rule_value
    raise InputError(
        f"dataset {entry.name!r}: source.rule.{split}_per_class must be a positive count or "
        f"'all', got {rule_value!r}"
    )


def derive(entry: DatasetEntry, parent: Plan) -> Plan:
    """Select listed classes of ``parent`` and, per split, ``<split>_per_class`` seeded picks."""
    source = entry.source
    assert isinstance(source, DerivedSource)
    if entry.class_names is None:
        raise InputError(f"dataset {entry.name!r}: a derived dataset must list its classes")
    unknown = [c for c in entry.class_names if c not in parent.class_names]
    if unknown:
        raise InputError(
            f"dataset {entry.name!r}: classes not in parent {source.parent!r}: {unknown[:5]}"
        )
    seed = int(source.rule.get("seed", 0))
    splits = {}
    for split in entry.splits:
        if split not in parent.splits:
            raise InputError(f"dataset {entry.name!r}: parent has no split {split!r}")
        base = parent.splits[split]
        if not isinstance(base, FileSplit):
            raise InputError(f"dataset {entry.name!r}: can only derive from image files")
        take = _take(source.rule.get(f"{split}_per_class", "all"), split, entry)
        rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
        files: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(entry.class_names):
            members = np.flatnonzero(base.labels == parent.class_names.index(name))
            if take is not None:
                if len(members) < take:
                    raise InputError(
                        f"dataset {entry.name!r} split {split!r}: class {name!r} has "
                        f"{len(members)} images in {source.parent!r}, fewer than {take}"
                    )
                members = np.sort(rng.choice(members, size=take, replace=False))
            files += [base.files[int(i)] for i in members]
            labels += [label] * len(members)
        splits[split] = FileSplit(tuple(files), np.asarray(labels, dtype=np.int32))
    return Plan(entry.class_names, splits)
