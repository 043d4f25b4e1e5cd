"""The data manifest: every dataset and pretrained weights file, as typed, validated records.

``data/manifest.json`` (kind ``transfer-bench.manifest``, schema 1) lists each input with
its source (an https URL, a local archive, a synthetic generator + seed, or a rule that
derives it from another dataset), its pinned size and hash, the archive layout, class names
or a class count, split sizes and the digest of the prepared cache per image size.
:func:`load_manifest` refuses anything malformed with one line naming the file and field,
including a field it does not know (a typo would silently mean nothing; synthetic
``params`` are the generator's to check), a dataset of fewer than two classes, a key given
twice anywhere (JSON would silently keep the last copy) and a layout path that leads
outside the dataset's own folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import urlsplit

from harness import jsonio, paths
from harness.errors import InputError

MANIFEST_KIND = "transfer-bench.manifest"
MANIFEST_SCHEMA = 1
MANIFEST = jsonio.Record(MANIFEST_KIND, MANIFEST_SCHEMA)  # read and rewritten through it

# Plain http is accepted only for loopback servers (the tests' local server).
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

# A classifier needs two classes: with one, softmax + cross-entropy is 0 from the first step
# and "trains" nothing (issue 18).
MIN_CLASSES = 2

# The fields each object may have; anything else is refused, naming the field.
_TOP_FIELDS = ("kind", "schema", "datasets", "weights")
_DATASET_FIELDS = (
    "description", "license", "source", "layout", "classes", "channels", "regime", "splits",
    "prepared",
)  # fmt: skip
_WEIGHTS_FIELDS = ("description", "source", "architecture", "pretrained_on")
_SOURCE_FIELDS = {
    "https": ("type", "url", "filename", "size", "sha256", "md5"),
    "local": ("type", "filename", "size", "sha256", "md5"),
    "file": ("type", "path", "size", "sha256"),
    "synthetic": ("type", "generator", "seed", "params"),
    "derived": ("type", "parent", "rule"),
}
_LAYOUT_FIELDS = {
    "image-folders": ("format", "root", "splits", "val_from_train", "extract"),
    "cub-200-2011": ("format", "root", "val_per_class", "val_seed", "extract"),
    "npz": ("format", "splits", "extract"),
}
_ARCHITECTURE_FIELDS = ("model", "alpha", "input_size", "include_top")


@dataclass(frozen=True)
class HttpsSource:
    """A file downloaded from ``url``; pinned by sha256 (or md5 where that is all there is)."""

    url: str
    filename: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    type: str = "https"

    @property
    def pinned(self) -> bool:
        return bool(self.sha256 or self.md5)


@dataclass(frozen=True)
class LocalSource:
    """An archive the user supplies with ``bench data fetch NAME --from PATH``."""

    filename: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    type: str = "local"

    @property
    def pinned(self) -> bool:
        return bool(self.sha256 or self.md5)


@dataclass(frozen=True)
class FileSource:
    """A file shipped in the repository, ``path`` relative to the project root."""

    path: str
    size: int | None = None
    sha256: str | None = None
    type: str = "file"

    @property
    def filename(self) -> str:
        return Path(self.path).name

    @property
    def pinned(self) -> bool:
        return bool(self.sha256)


@dataclass(frozen=True)
class SyntheticSource:
    """Images generated deterministically by ``harness.datasets.synthetic`` from ``seed``."""

    generator: str
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    type: str = "synthetic"


@dataclass(frozen=True)
class DerivedSource:
    """A subset of dataset ``parent`` selected by ``rule`` (no files are copied)."""

    parent: str
    rule: dict[str, Any]
    type: str = "derived"


Source = HttpsSource | LocalSource | FileSource | SyntheticSource | DerivedSource
FetchedSource = HttpsSource | LocalSource


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset: where it comes from, its classes and splits, its pinned prepared digests."""

    name: str
    source: Source
    class_names: tuple[str, ...] | None
    num_classes: int
    channels: int
    splits: dict[str, int]
    prepared: dict[str, dict[str, Any]]
    layout: dict[str, Any]
    description: str = ""
    license: str = ""
    # The transfer-learning regime this dataset stands for, e.g. {"data": "small",
    # "domain": "similar"}; the report's findings check the rules of thumb against it.
    regime: dict[str, str] | None = None
    # Set when the regime was derived by a rule rather than declared (`bench data add`): why.
    regime_derived: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    parent_fingerprint: str = ""  # a derived dataset's cache also depends on its parent

    def pinned_digest(self, image_size: int) -> str | None:
        """The pinned sha256 of the prepared cache at ``image_size``, if any."""
        pin = self.prepared.get(str(image_size))
        return pin.get("digest") if pin else None

    @property
    def fingerprint(self) -> str:
        """sha256 of everything that determines the prepared cache (not the pins themselves)."""
        descriptive = ("prepared", "description", "license", "regime")
        keep = {k: v for k, v in self.raw.items() if k not in descriptive}
        source = dict(keep.get("source", {}))
        for volatile in ("size", "sha256", "md5", "url"):
            source.pop(volatile, None)
        keep["source"] = source
        if "extract" in keep.get("layout", {}):  # bounds on extraction, not what is extracted
            keep["layout"] = {k: v for k, v in keep["layout"].items() if k != "extract"}
        keep["parent_fingerprint"] = self.parent_fingerprint
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class WeightsEntry:
    """One pretrained weights file and the architecture it belongs to."""

    name: str
    source: HttpsSource | FileSource
    sha256: str | None
    size: int | None
    architecture: dict[str, Any]
    pretrained_on: str
    description: str = ""


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest; ``digest`` is the sha256 of the file's bytes."""

    path: Path
    digest: str
    datasets: dict[str, DatasetEntry]
    weights: dict[str, WeightsEntry]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def dataset(self, name: str) -> DatasetEntry:
        try:
            return self.datasets[name]
        except KeyError:
            known = ", ".join(sorted(self.datasets)) or "none"
            raise InputError(f"unknown dataset {name!r} in {self.path} (known: {known})") from None

    def weight(self, name: str) -> WeightsEntry:
        try:
            return self.weights[name]
        except KeyError:
            known = ", ".join(sorted(self.weights)) or "none"
            raise InputError(f"unknown weights {name!r} in {self.path} (known: {known})") from None

    def entry(self, name: str) -> DatasetEntry | WeightsEntry:
        """A dataset or weights entry by name (datasets first)."""
        if name in self.datasets:
            return self.datasets[name]
        if name in self.weights:
            return self.weights[name]
        known = ", ".join(sorted([*self.datasets, *self.weights])) or "none"
        raise InputError(f"unknown dataset or weights {name!r} in {self.path} (known: {known})")


class _Fields:
    """Typed access to one JSON object, with errors naming the file and the field path."""

    def __init__(self, obj: Any, where: str, path: Path) -> None:
        self.where = where
        self.path = path
        if not isinstance(obj, dict):
            self.fail(f"expected an object, got {json.dumps(obj)[:60]}")
        self.obj: dict[str, Any] = obj

    def fail(self, what: str, key: str | None = None) -> None:
        at = f"{self.where}.{key}" if key else self.where
        raise InputError(f"{self.path}: {at}: {what}")

    def req(self, key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in self.obj:
            self.fail("missing field", key)
        return self._check(key, self.obj[key], kind)

    def opt(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.obj.get(key)
        return default if value is None else self._check(key, value, kind)

    def _check(self, key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            self.fail(f"expected {names}, got {json.dumps(value)[:60]}", key)
        return value

    def sub(self, key: str) -> _Fields:
        return _Fields(self.req(key, dict), f"{self.where}.{key}", self.path)

    def only(self, known: Iterable[str]) -> None:
        """Refuse a key outside ``known`` (a typo would otherwise be silently ignored)."""
        allowed = sorted(known)
        for key in self.obj:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.fail(f"unknown field ({hint}known: {', '.join(allowed)})", key)


def _hexdigest(f: _Fields, key: str, length: int) -> str | None:
    value = f.opt(key, str)
    if value is not None and (
        len(value) != length or any(c not in "0123456789abcdef" for c in value)
    ):
        f.fail(f"expected {length} lowercase hex digits, got {value!r}", key)
    return value


def _size(f: _Fields) -> int | None:
    size = f.opt("size", int)
    if size is not None and size < 0:
        f.fail(f"expected a size >= 0, got {size}", "size")
    return size


def _parse_source(f: _Fields, *, allowed: tuple[str, ...]) -> Source:
    kind = f.req("type", str)
    if kind not in allowed:
        f.fail(f"unknown source type {kind!r} (expected one of: {', '.join(allowed)})", "type")
    f.only(_SOURCE_FIELDS[kind])
    if kind == "https":
        url = f.req("url", str)
        parts = urlsplit(url)
        loopback_http = parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS
        if parts.scheme != "https" and not loopback_http:
            f.fail(f"expected an https:// URL, got {url!r}", "url")
        default_name = Path(parts.path).name
        filename = f.opt("filename", str, default_name)
        if not filename or "/" in filename:
            f.fail(f"expected a plain file name, got {filename!r}", "filename")
        return HttpsSource(
            url=url,
            filename=filename,
            size=_size(f),
            sha256=_hexdigest(f, "sha256", 64),
            md5=_hexdigest(f, "md5", 32),
        )
    if kind == "local":
        filename = f.req("filename", str)
        if not filename or "/" in filename:
            f.fail(f"expected a plain file name, got {filename!r}", "filename")
        return LocalSource(
            filename=filename,
            size=_size(f),
            sha256=_hexdigest(f, "sha256", 64),
            md5=_hexdigest(f, "md5", 32),
        )
    if kind == "file":
        rel = f.req("path", str)
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            f.fail(f"expected a path inside the project, got {rel!r}", "path")
        return FileSource(path=rel, size=_size(f), sha256=_hexdigest(f, "sha256", 64))
    if kind == "synthetic":
        return SyntheticSource(
            generator=f.req("generator", str),
            seed=f.req("seed", int),
            params=dict(f.opt("params", dict, {})),
        )
    return DerivedSource(parent=f.req("parent", str), rule=dict(f.req("rule", dict)))


def _parse_classes(f: _Fields) -> tuple[tuple[str, ...] | None, int]:
    classes = f.req("classes", (list, dict))
    if isinstance(classes, list):
        if not classes or not all(isinstance(c, str) and c for c in classes):
            f.fail("expected a non-empty list of class names", "classes")
        if len(set(classes)) != len(classes):
            f.fail("class names are not unique", "classes")
        if len(classes) < MIN_CLASSES:
            f.fail(
                f"expected at least {MIN_CLASSES} classes (a classifier of one class learns "
                f"nothing: its loss is 0 from the start), got {classes!r}",
                "classes",
            )
        return tuple(classes), len(classes)
    counted = f.sub("classes")
    counted.only(("count",))
    count = counted.req("count", int)
    if count < MIN_CLASSES:
        f.fail(
            f"expected a class count >= {MIN_CLASSES} (a classifier of one class learns "
            f"nothing: its loss is 0 from the start), got {count}",
            "classes.count",
        )
    return None, count


def _parse_dataset(name: str, f: _Fields) -> DatasetEntry:
    f.only(_DATASET_FIELDS)
    source = _parse_source(f.sub("source"), allowed=("https", "local", "synthetic", "derived"))
    class_names, num_classes = _parse_classes(f)
    channels = f.req("channels", int)
    if channels not in (1, 3):
        f.fail(f"expected 1 or 3, got {channels}", "channels")
    splits_f = f.sub("splits")
    splits = {}
    for split in splits_f.obj:
        count = splits_f.req(split, int)
        if count < 0:
            splits_f.fail(f"expected a count >= 0, got {count}", split)
        splits[split] = count
    if not splits:
        f.fail("expected at least one split", "splits")
    if isinstance(source, DerivedSource):  # `<split>_per_class` for each split, and a seed
        f.sub("source").sub("rule").only(("seed", *(f"{s}_per_class" for s in splits)))
    prepared_f = f.sub("prepared") if "prepared" in f.obj else None
    prepared: dict[str, dict[str, Any]] = {}
    if prepared_f is not None:
        for size in prepared_f.obj:
            if not size.isdigit():
                prepared_f.fail(f"expected an image size like '224', got {size!r}", size)
            pin = prepared_f.sub(size)
            pin.only(("digest",))
            _hexdigest(pin, "digest", 64)
            pin.req("digest", str)
            prepared[size] = dict(pin.obj)
    layout = dict(f.opt("layout", dict, {}))
    if isinstance(source, HttpsSource | LocalSource):
        f.sub("layout").req("format", str)
    if layout:
        _check_layout(f.sub("layout"), splits)
    regime, regime_derived = _parse_regime(f.sub("regime")) if "regime" in f.obj else (None, None)
    return DatasetEntry(
        name=name,
        source=source,
        class_names=class_names,
        num_classes=num_classes,
        channels=channels,
        splits=splits,
        prepared=prepared,
        layout=layout,
        description=f.opt("description", str, ""),
        license=f.opt("license", str, ""),
        regime=regime,
        regime_derived=regime_derived,
        raw=f.obj,
    )


def _inside_path(f: _Fields, key: str, value: Any) -> str:
    """A relative path that stays inside the dataset's folder ('.' is the folder itself)."""
    if not isinstance(value, str) or not value:
        f.fail(f"expected a relative folder path, got {json.dumps(value)[:60]}", key)
    posix, windows = PurePosixPath(value), PureWindowsPath(value)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or value.startswith("~"):
        f.fail(f"expected a path inside the dataset's folder, got absolute {value!r}", key)
    if ".." in posix.parts or ".." in windows.parts:
        f.fail(f"expected a path inside the dataset's folder, got {value!r} (it climbs out)", key)
    return value


_EXTRACT_BOUNDS = {"max_bytes": (int,), "max_members": (int,), "max_ratio": (int, float)}


def _check_layout(f: _Fields, splits: dict[str, int]) -> None:
    """Paths inside the dataset's folder; ``val_from_train`` and ``extract`` well formed."""
    fmt = f.opt("format", str)
    if "root" in f.obj:
        _inside_path(f, "root", f.obj["root"])
    if fmt == "image-folders" and "splits" in f.obj:
        dirs = f.sub("splits")
        for split in dirs.obj:
            _inside_path(dirs, split, dirs.obj[split])
    if "val_from_train" in f.obj:
        if fmt != "image-folders":
            f.fail(
                f"only image-folders layouts carve val out of train (this one is {fmt!r})",
                "val_from_train",
            )
        _check_val_from_train(f.sub("val_from_train"), splits)
        if "splits" in f.obj and "val" in f.obj["splits"]:
            f.fail("val comes from val_from_train: drop its folder from layout.splits", "splits")
    if "extract" in f.obj:
        bounds = f.sub("extract")
        for key in bounds.obj:
            if key not in _EXTRACT_BOUNDS:
                bounds.fail(f"unknown field; expected {sorted(_EXTRACT_BOUNDS)}", key)
            value = bounds.req(key, _EXTRACT_BOUNDS[key])
            if value <= 0:
                bounds.fail(f"expected a number > 0, got {value!r}", key)
    # Last, so that a known field in the wrong layout gets its specific message above.
    f.only(_LAYOUT_FIELDS.get(fmt or "", sorted({k for v in _LAYOUT_FIELDS.values() for k in v})))


def _check_val_from_train(f: _Fields, splits: dict[str, int]) -> None:
    """``{"fraction": 0 < x < 1}`` or ``{"count": n >= 1}`` per class, plus an optional seed."""
    for key in f.obj:
        if key not in ("fraction", "count", "seed"):
            f.fail("unknown field; expected fraction or count, and seed", key)
    if ("fraction" in f.obj) == ("count" in f.obj):
        f.fail("give exactly one of fraction (per class, 0 < x < 1) or count (per class)")
    if "fraction" in f.obj:
        fraction = f.req("fraction", (int, float))
        if not 0 < fraction < 1:
            f.fail(f"expected 0 < fraction < 1, got {fraction!r}", "fraction")
    else:
        count = f.req("count", int)
        if count < 1:
            f.fail(f"expected a count >= 1, got {count!r}", "count")
    seed = f.opt("seed", int, 0)
    if seed < 0:
        f.fail(f"expected a seed >= 0, got {seed!r}", "seed")
    for split in ("train", "val"):
        if split not in splits:
            f.fail(f"val_from_train needs a {split!r} split in the entry's splits")


_REGIME_VALUES = {"data": ("small", "big"), "domain": ("similar", "different")}


def _parse_regime(f: _Fields) -> tuple[dict[str, str], str | None]:
    """``{"data": small|big, "domain": similar|different}`` (relative to the pretraining data).

    An optional ``"derived"`` string says the values came from a rule (and which), not
    from someone who knows the data; ``bench data add`` writes it when not told a regime.
    """
    for key in f.obj:
        if key not in (*_REGIME_VALUES, "derived"):
            f.fail(f"unknown field; expected {sorted(_REGIME_VALUES)} (and 'derived')", key)
    regime = {}
    for key, allowed in _REGIME_VALUES.items():
        value = f.req(key, str)
        if value not in allowed:
            f.fail(f"expected one of {list(allowed)}, got {value!r}", key)
        regime[key] = value
    return regime, f.opt("derived", str)


def _parse_weights(name: str, f: _Fields) -> WeightsEntry:
    source = _parse_source(f.sub("source"), allowed=("https", "file"))
    assert isinstance(source, HttpsSource | FileSource)
    for key in ("sha256", "size"):  # one place for pins, where `bench data pin` writes them
        if key in f.obj:
            f.fail(f"move it into {f.where}.source (where `bench data pin` records it)", key)
    f.only(_WEIGHTS_FIELDS)
    f.sub("architecture").only(_ARCHITECTURE_FIELDS)
    return WeightsEntry(
        name=name,
        source=source,
        sha256=source.sha256,
        size=source.size,
        architecture=dict(f.req("architecture", dict)),
        pretrained_on=f.req("pretrained_on", str),
        description=f.opt("description", str, ""),
    )


def _with_lineage(
    datasets: dict[str, DatasetEntry], name: str, path: Path, seen: tuple[str, ...]
) -> DatasetEntry:
    """``name``'s entry with its parent's fingerprint folded in (checked: known, no cycle)."""
    entry = datasets[name]
    if not isinstance(entry.source, DerivedSource):
        return entry
    parent = entry.source.parent
    if parent not in datasets:
        raise InputError(f"{path}: datasets.{name}.source.parent: unknown dataset {parent!r}")
    if parent in (*seen, name):
        raise InputError(f"{path}: datasets.{name}.source.parent: derivation cycle via {parent!r}")
    base = _with_lineage(datasets, parent, path, (*seen, name))
    return dataclasses.replace(entry, parent_fingerprint=base.fingerprint)


class _Object(dict):
    """A JSON object that remembers the keys it was given more than once."""

    duplicates: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object()
    dups = []
    for key, value in pairs:
        if key in obj:
            dups.append(key)
        obj[key] = value
    obj.duplicates = tuple(dups)
    return obj


def _first_duplicate(node: Any, where: str) -> str | None:
    """The key path of the first key given twice in one object (document order), if any."""
    if isinstance(node, _Object):
        if node.duplicates:
            return f"{where}.{node.duplicates[0]}"
        for key, value in node.items():
            found = _first_duplicate(value, f"{where}.{key}")
            if found:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found = _first_duplicate(value, f"{where}[{i}]")
            if found:
                return found
    return None


def check_duplicate_keys(data: bytes, path: Path) -> None:
    """Refuse a JSON text with a key given twice in one object, naming the key path."""
    try:
        tree = json.loads(data, object_pairs_hook=_object_pairs)
    except (ValueError, RecursionError):
        return  # not JSON at all: the reader says so with its own line
    dup = _first_duplicate(tree, "manifest")
    if dup:
        raise InputError(
            f"{path}: duplicate key {dup}: JSON keeps only the last copy and silently drops "
            "the other; remove one of them"
        )


def load_manifest(path: Path | None = None) -> Manifest:
    """Read and validate the manifest (default: ``data/manifest.json`` of the project)."""
    path = Path(path) if path is not None else paths.manifest_path()
    obj = MANIFEST.read(path)
    data = path.read_bytes()
    check_duplicate_keys(data, path)
    return parse_manifest(obj, path, hashlib.sha256(data).hexdigest())


def parse_manifest(obj: dict[str, Any], path: Path, digest: str = "") -> Manifest:
    """Validate a manifest's JSON object (already read) into typed records."""
    top = _Fields(obj, "manifest", path)
    top.only(_TOP_FIELDS)
    datasets_f = top.sub("datasets")
    weights_f = top.sub("weights") if "weights" in obj else _Fields({}, "weights", path)
    datasets = {n: _parse_dataset(n, datasets_f.sub(n)) for n in datasets_f.obj}
    weights = {n: _parse_weights(n, weights_f.sub(n)) for n in weights_f.obj}
    for name in list(datasets):
        datasets[name] = _with_lineage(datasets, name, path, ())
    return Manifest(path=path, digest=digest, datasets=datasets, weights=weights, raw=obj)
