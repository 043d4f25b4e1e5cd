"""The manifest parser: the repository's manifest as typed records, and bad manifests refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from data_fixtures import run_cli, write_manifest

from harness.errors import InputError
from harness.manifest import (
    DerivedSource,
    HttpsSource,
    LocalSource,
    SyntheticSource,
    load_manifest,
)

KIND = "transfer-bench.manifest"
REPO_MANIFEST = Path(__file__).resolve().parents[1] / "data" / "manifest.json"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "home"


def _entry(**over: object) -> dict:
    entry = {
        "source": {"type": "https", "url": "https://example.org/a.tgz", "md5": "0" * 32},
        "layout": {"format": "image-folders"},
        "classes": ["a", "b"],
        "channels": 3,
        "splits": {"train": 4, "val": 2},
        "prepared": {},
    }
    entry.update(over)
    return entry


def test_repository_manifest_parses_into_typed_records() -> None:
    m = load_manifest(REPO_MANIFEST)
    assert m.digest == hashlib.sha256(REPO_MANIFEST.read_bytes()).hexdigest()
    chest = m.dataset("chest-xray")
    assert isinstance(chest.source, HttpsSource)
    assert chest.source.md5 == "d6a3c71de1b945ea11211b03746c1fe1"
    assert chest.source.filename == "pneumoniamnist_224.npz"
    assert chest.class_names == ("normal", "pneumonia") and chest.channels == 1
    assert chest.splits == {"train": 4708, "val": 524, "test": 624}
    cub = m.dataset("cub-200")
    assert cub.class_names is None and cub.num_classes == 200
    assert sum(cub.splits.values()) == 11788
    assert isinstance(m.dataset("birds-400").source, LocalSource)
    birds30 = m.dataset("birds-30")
    assert isinstance(birds30.source, DerivedSource) and birds30.source.parent == "birds-400"
    assert birds30.num_classes == 30 and birds30.splits["train"] == 3000
    synthetic = [e for e in m.datasets.values() if isinstance(e.source, SyntheticSource)]
    assert synthetic, "the synthetic datasets are listed"
    weights = m.weight("mobilenet_v2_imagenet_1.0_224_no_top")
    assert weights.size == 9406464 and weights.architecture["alpha"] == 1.0


def test_fingerprint_ignores_pins_but_not_content() -> None:
    m = load_manifest(REPO_MANIFEST)
    raw = m.dataset("chest-xray").raw
    pinned = dict(
        raw, source=dict(raw["source"], sha256="f" * 64), prepared={"224": {"digest": "0" * 64}}
    )
    reseeded = dict(raw, layout=dict(raw["layout"], format="other"))
    from harness.manifest import _Fields, _parse_dataset

    def parse(obj: dict) -> str:
        return _parse_dataset("chest-xray", _Fields(obj, "d", REPO_MANIFEST)).fingerprint

    base = parse(raw)
    assert parse(pinned) == base
    assert parse(dict(raw, regime={"data": "small", "domain": "similar"})) == base
    assert parse(reseeded) != base


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"kind": KIND, "schema": 99, "datasets": {}}), "schema 99"),
        (json.dumps({"kind": "something-else", "schema": 1, "datasets": {}}), "kind="),
        (json.dumps({"kind": KIND, "schema": 1}), "manifest.datasets: missing"),
    ],
    ids=["not-json", "unknown-schema", "wrong-kind", "no-datasets"],
)
def test_bad_manifest_file_exits_2_with_one_line(
    home: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    path = home / "data" / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    code, _, err = run_cli(capsys, "data", "list")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("bench: error: ")
    assert str(path) in err and needle in err


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda e: e.pop("splits"), "datasets.pets.splits: missing field"),
        (lambda e: e.pop("classes"), "datasets.pets.classes: missing field"),
        (lambda e: e["source"].pop("url"), "datasets.pets.source.url: missing field"),
        (lambda e: e.update(channels="3"), "datasets.pets.channels: expected int"),
        (lambda e: e.update(channels=2), "datasets.pets.channels: expected 1 or 3"),
        (lambda e: e["splits"].update(train=-1), "datasets.pets.splits.train"),
        (lambda e: e["source"].update(type="ftp"), "unknown source type 'ftp'"),
        (lambda e: e["source"].update(url="http://example.org/a"), "expected an https:// URL"),
        (lambda e: e["source"].update(sha256="xyz"), "expected 64 lowercase hex digits"),
        (lambda e: e.update(classes=["a", "a"]), "class names are not unique"),
        (lambda e: e.update(prepared={"big": {"digest": "0" * 64}}), "image size like '224'"),
        (lambda e: e.update(source={"type": "derived", "parent": "nope", "rule": {}}), "'nope'"),
        (lambda e: e.update(regime={"data": "huge", "domain": "similar"}), "regime.data"),
        (lambda e: e.update(regime={"data": "big"}), "regime.domain: missing field"),
        (lambda e: e.update(regime={"data": "big", "domain": "similar", "x": 1}), "regime.x"),
        (
            lambda e: e["layout"].update(splits={"train": "../../other/train", "val": "val"}),
            "layout.splits.train: expected a path inside the dataset's folder",
        ),
        (lambda e: e["layout"].update(root="/etc"), "layout.root: expected a path inside"),
        (lambda e: e["layout"].update(root="a/../.."), "(it climbs out)"),
        (lambda e: e["layout"].update(root="C:\\data"), "layout.root: expected a path inside"),
        (
            lambda e: e["layout"].update(val_from_train={"fraction": 1.5}),
            "layout.val_from_train.fraction: expected 0 < fraction < 1",
        ),
        (
            lambda e: e["layout"].update(val_from_train={"fraction": 0.1, "count": 2}),
            "layout.val_from_train: give exactly one of fraction",
        ),
        (
            lambda e: e["layout"].update(format="npz", val_from_train={"count": 2}),
            "only image-folders layouts carve val out of train",
        ),
        (
            lambda e: e["layout"].update(
                splits={"train": "t", "val": "v"}, val_from_train={"count": 1}
            ),
            "val comes from val_from_train",
        ),
        (lambda e: e["layout"].update(extract={"max_bytes": 0}), "layout.extract.max_bytes"),
        (lambda e: e["layout"].update(extract={"max_files": 9}), "layout.extract.max_files"),
    ],
    ids=[
        "no-splits",
        "no-classes",
        "no-url",
        "channels-type",
        "channels-value",
        "negative-split",
        "source-type",
        "plain-http",
        "bad-sha256",
        "duplicate-classes",
        "prepared-size",
        "unknown-parent",
        "regime-value",
        "regime-missing",
        "regime-unknown-key",
        "layout-path-dotdot",
        "layout-root-absolute",
        "layout-root-climbs",
        "layout-root-windows",
        "val-fraction",
        "val-both",
        "val-not-image-folders",
        "val-and-folder",
        "extract-bound",
        "extract-unknown",
    ],
)
def test_bad_manifest_field_names_the_field(
    home: Path, capsys: pytest.CaptureFixture[str], mutate: object, needle: str
) -> None:
    entry = _entry()
    mutate(entry)  # type: ignore[operator]
    write_manifest(home, {"pets": entry})
    code, _, err = run_cli(capsys, "data", "list")
    assert code == 2
    assert err.count("\n") == 1 and needle in err, err


def test_unknown_dataset_name_lists_the_known_ones(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_manifest(home, {"pets": _entry()})
    for argv in (("data", "prepare", "nope"), ("data", "fetch", "nope"), ("data", "pin", "nope")):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1
        assert "'nope'" in err and "known: pets" in err
    with pytest.raises(InputError, match="unknown weights 'w'"):
        load_manifest().weight("w")


def test_loopback_http_is_accepted_for_tests(home: Path) -> None:
    entry = _entry(source={"type": "https", "url": "http://127.0.0.1:8/x/a.tar.gz"})
    write_manifest(home, {"pets": entry})
    source = load_manifest().dataset("pets").source
    assert isinstance(source, HttpsSource) and source.filename == "a.tar.gz"
    assert not source.pinned


def test_derived_dataset_fingerprint_follows_its_parent(home: Path) -> None:
    child = {
        "source": {"type": "derived", "parent": "pets", "rule": {"seed": 1}},
        "classes": ["a", "b"],
        "channels": 3,
        "splits": {"train": 1},
    }
    write_manifest(home, {"pets": _entry(), "few": child})
    before = load_manifest().dataset("few").fingerprint
    write_manifest(home, {"pets": _entry(channels=1), "few": child})
    assert load_manifest().dataset("few").fingerprint != before


def test_derivation_cycle_is_refused(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def derived(parent: str) -> dict:
        return {
            "source": {"type": "derived", "parent": parent, "rule": {}},
            "classes": ["a", "b"],
            "channels": 3,
            "splits": {"train": 1},
        }

    write_manifest(home, {"x": derived("y"), "y": derived("x")})
    code, _, err = run_cli(capsys, "data", "list")
    assert code == 2 and "derivation cycle" in err and err.count("\n") == 1


def test_weights_pins_live_in_the_source_only(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arch = {"model": "mobilenet_v2", "alpha": 1.0, "input_size": 224, "include_top": False}
    source = {"type": "file", "path": "data/weights/w.h5", "sha256": "a" * 64, "size": 3}
    entry = {"source": source, "architecture": arch, "pretrained_on": "imagenet"}
    write_manifest(home, {}, {"w": entry})
    assert load_manifest().weight("w").sha256 == "a" * 64
    # A second copy beside the source would drift from what `bench data pin` updates.
    write_manifest(home, {}, {"w": {**entry, "sha256": "b" * 64}})
    code, _, err = run_cli(capsys, "data", "list")
    assert code == 2 and err.count("\n") == 1
    assert "manifest.weights.w.sha256: move it into manifest.weights.w.source" in err, err


def _dup_text(first: dict, second: dict) -> str:
    """A manifest whose datasets object names ``pets`` twice (JSON keeps the last copy)."""
    head = json.dumps({"kind": KIND, "schema": 1})[:-1]
    return f'{head}, "datasets": {{"pets": {json.dumps(first)}, "pets": {json.dumps(second)}}}}}'


def test_duplicate_keys_are_refused_with_their_path(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: a second copy of an entry silently won, and prepare rebuilt from it."""
    from data_fixtures import files_under, folders_entry, make_image_folders, make_tar

    src = make_image_folders(
        home.parent / "src", {"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}}
    )
    archive = make_tar(src, home.parent / "pets.tar.gz")
    good = folders_entry(None, archive, ["a", "b"], {"train": 6, "val": 2})
    write_manifest(home, {"pets": good})
    assert run_cli(capsys, "data", "fetch", "pets", "--from", str(archive))[0] == 0
    assert run_cli(capsys, "data", "prepare", "pets", "--image-size", "8")[0] == 0
    prepared = home.parent / "data" / "prepared" / "pets"
    before = files_under(prepared)
    other = json.loads(json.dumps(good))
    other["layout"]["splits"] = {"train": "val", "val": "val"}  # a different dataset
    other["splits"] = {"train": 2, "val": 2}
    path = home / "data" / "manifest.json"
    path.write_text(_dup_text(good, other))
    for argv in (("data", "prepare", "pets", "--image-size", "8"), ("data", "list")):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1, err
        assert "duplicate key manifest.datasets.pets" in err and str(path) in err
    assert files_under(prepared) == before  # the good cache is untouched
    nested = json.dumps({"kind": KIND, "schema": 1, "datasets": {"pets": good}})
    nested = nested.replace('"channels": 3', '"channels": 3, "channels": 1')
    path.write_text(nested)
    code, _, err = run_cli(capsys, "data", "list")
    assert code == 2 and "duplicate key manifest.datasets.pets.channels" in err


def test_layout_path_outside_the_dataset_is_refused(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: ``../../other/train`` prepared another dataset's files."""
    from data_fixtures import folders_entry, make_image_folders, make_tar

    splits = {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}}
    other = make_tar(make_image_folders(home.parent / "o", splits), home.parent / "other.tar.gz")
    mine = make_tar(make_image_folders(home.parent / "m", splits, seed=1), home.parent / "m.tgz")
    counts = {"train": 4, "val": 2}
    datasets = {
        "other": folders_entry(None, other, ["a", "b"], counts),
        "pets": folders_entry(None, mine, ["a", "b"], counts),
    }
    write_manifest(home, datasets)
    for name, archive in (("other", other), ("pets", mine)):
        assert run_cli(capsys, "data", "fetch", name, "--from", str(archive))[0] == 0
    datasets["pets"]["layout"]["splits"] = {"train": "../../other/train", "val": "val"}
    write_manifest(home, datasets)
    code, _, err = run_cli(capsys, "data", "prepare", "pets", "--image-size", "8")
    assert code == 2 and err.count("\n") == 1
    assert "datasets.pets.layout.splits.train" in err and "'../../other/train'" in err
    assert not (home.parent / "data" / "prepared" / "pets").exists()


def _weights() -> dict:
    arch = {"model": "mobilenet_v2", "alpha": 1.0, "input_size": 224, "include_top": False}
    source = {"type": "file", "path": "data/weights/w.h5", "sha256": "a" * 64, "size": 3}
    return {"source": source, "architecture": arch, "pretrained_on": "imagenet"}


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda m: m.update(comment="x"), "manifest.comment: unknown field"),
        (
            lambda m: m["datasets"]["pets"].update(descripton="x"),
            "manifest.datasets.pets.descripton: unknown field (did you mean 'description'?",
        ),
        (
            lambda m: m["datasets"]["pets"]["source"].update(sha265="0" * 64),
            "manifest.datasets.pets.source.sha265: unknown field (did you mean 'sha256'?",
        ),
        (
            lambda m: m["datasets"]["pets"].update(classes={"count": 2, "names": ["a", "b"]}),
            "manifest.datasets.pets.classes.names: unknown field",
        ),
        (
            lambda m: m["datasets"]["pets"].update(prepared={"32": {"digest": "0" * 64, "x": 1}}),
            "manifest.datasets.pets.prepared.32.x: unknown field",
        ),
        (
            lambda m: m["datasets"]["pets"]["layout"].update(rooot="images"),
            "manifest.datasets.pets.layout.rooot: unknown field (did you mean 'root'?",
        ),
        (
            lambda m: m["datasets"].update(
                few={
                    "source": {"type": "derived", "parent": "pets", "rule": {"train_per_clas": 1}},
                    "classes": ["a", "b"],
                    "channels": 3,
                    "splits": {"train": 2},
                }
            ),
            "manifest.datasets.few.source.rule.train_per_clas: unknown field (did you mean "
            "'train_per_class'?",
        ),
        (
            lambda m: m["weights"]["w"].update(pretrained_from="imagenet"),
            "manifest.weights.w.pretrained_from: unknown field",
        ),
        (
            lambda m: m["weights"]["w"]["architecture"].update(alpah=0.35),
            "manifest.weights.w.architecture.alpah: unknown field (did you mean 'alpha'?",
        ),
    ],
    ids=[
        "top",
        "dataset",
        "source",
        "classes",
        "prepared",
        "layout",
        "rule",
        "weights",
        "arch",
    ],
)
def test_unknown_fields_are_refused_by_name(
    home: Path, capsys: pytest.CaptureFixture[str], mutate: object, needle: str
) -> None:
    """Issue 18: a typo'd field was accepted silently, so what it meant never took effect."""
    path = write_manifest(home, {"pets": _entry()}, {"w": _weights()})
    assert load_manifest().dataset("pets").num_classes == 2  # the unmutated manifest is good
    raw = json.loads(path.read_text())
    mutate(raw)  # type: ignore[operator]
    path.write_text(json.dumps(raw))
    code, _, err = run_cli(capsys, "data", "list")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err and needle in err, err


@pytest.mark.parametrize(
    ("classes", "needle"),
    [
        (["a"], "datasets.pets.classes: expected at least 2 classes"),
        ({"count": 1}, "datasets.pets.classes.count: expected a class count >= 2"),
    ],
    ids=["one-name", "count-1"],
)
def test_one_class_dataset_is_refused(
    home: Path, capsys: pytest.CaptureFixture[str], classes: object, needle: str
) -> None:
    """Issue 18: a one-class dataset "trained" with loss 0 and accuracy 0 in every epoch."""
    path = write_manifest(home, {"pets": _entry(classes=classes)})
    code, _, err = run_cli(capsys, "data", "list")
    assert code == 2 and err.count("\n") == 1, err
    assert str(path) in err and needle in err and "got" in err, err
