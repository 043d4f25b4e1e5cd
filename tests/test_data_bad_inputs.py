"""Every bad input exits 2 with one line naming it, leaves no partial file, spares the old cache.

A good dataset is fetched from a loopback HTTP server and prepared first; each case then
points the manifest at a broken download or archive and checks the refusal. Bombs (a
ratio bomb, a member-count bomb, in tar.gz and zip) are generated here, small on disk.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from data_fixtures import (
    Server,
    files_under,
    folders_entry,
    http_server,
    make_image_folders,
    make_tar,
    run_cli,
    sha256,
    tar_with,
    write_manifest,
)

from harness.datasets import cache

SPLITS = {"train": {"cat": 3, "dog": 3}, "val": {"cat": 1, "dog": 1}}
COUNTS = {"train": 6, "val": 2}
PARTIAL_MARKERS = (".part", ".staging-", ".extract-", ".old-", ".compact")


@dataclass
class Good:
    env: Path
    server: Server
    src: Path
    body: bytes
    capsys: pytest.CaptureFixture[str]

    @property
    def data(self) -> Path:
        return self.env / "data"

    @property
    def archive(self) -> Path:
        return self.data / "archives" / "pets.tar.gz"

    def point_at(self, route: str, archive_bytes: bytes | None, mode: str = "ok", arg: int = 0):
        """Serve ``archive_bytes`` at ``route`` and make the manifest's pets entry use it."""
        body = archive_bytes if archive_bytes is not None else self.body
        self.server.routes[route] = (mode, body, arg)
        pinned = self.env / "pinned.bin"
        pinned.write_bytes(body)
        entry = folders_entry(self.server.url(route), pinned, ["cat", "dog"], COUNTS)
        entry["source"]["filename"] = "pets.tar.gz"
        write_manifest(self.env / "home", {"pets": entry})

    def refused(self, argv: tuple[str, ...], *needles: str) -> str:
        """Run ``bench ARGV``; it must exit 2 with one line holding every needle."""
        prepared = files_under(cache.cache_dir("pets", 16))
        code, _, err = run_cli(self.capsys, *argv)
        assert code == 2, err
        assert err.count("\n") == 1 and err.startswith("bench: error: "), err
        for needle in needles:
            assert needle in err, err
        leftovers = [p for p in self.data.rglob("*") if any(m in p.name for m in PARTIAL_MARKERS)]
        assert leftovers == []
        assert files_under(cache.cache_dir("pets", 16)) == prepared  # the good cache is intact
        assert cache.read_meta(cache.cache_dir("pets", 16))["splits"] == COUNTS
        return err


@pytest.fixture
def good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Good]:
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))
    src = make_image_folders(tmp_path / "src", SPLITS)
    body = make_tar(src, tmp_path / "pets.tar.gz").read_bytes()
    with http_server() as server:
        g = Good(tmp_path, server, src, body, capsys)
        g.point_at("/pets.tar.gz", body)
        assert run_cli(capsys, "data", "fetch", "pets")[0] == 0
        code, _, err = run_cli(capsys, "data", "prepare", "pets", "--image-size", "16")
        assert code == 0, err
        yield g


# --- downloads -------------------------------------------------------------------------


def test_wrong_hash_keeps_the_download_as_bad(good: Good) -> None:
    good.point_at("/other.tar.gz", good.body)
    entry = json.loads((good.env / "home" / "data" / "manifest.json").read_text())
    entry["datasets"]["pets"]["source"]["sha256"] = "0" * 64
    entry["datasets"]["pets"]["source"]["size"] = None
    (good.env / "home" / "data" / "manifest.json").write_text(json.dumps(entry))
    err = good.refused(("data", "fetch", "pets"), "'pets'", "sha256 mismatch", "0" * 64)
    bad = good.archive.with_name("pets.tar.gz.bad")
    assert bad.read_bytes() == good.body and str(bad) in err
    assert f"got {sha256(bad)}" in err


@pytest.mark.parametrize(
    ("mode", "arg", "needles"),
    [
        ("status", 404, ("HTTP 404",)),
        ("status", 500, ("HTTP 500",)),
        ("short", -1, ("cut short",)),
    ],
    ids=["http-404", "http-500", "truncated"],
)
def test_http_failures_leave_no_file(good: Good, mode: str, arg: int, needles: tuple) -> None:
    good.archive.unlink()
    if arg == -1:
        arg = len(good.body) // 2
    good.point_at("/broken.tar.gz", good.body if mode != "status" else b"", mode, arg)
    # the manifest pins the real archive, so only the transfer is at fault
    entry = json.loads((good.env / "home" / "data" / "manifest.json").read_text())
    entry["datasets"]["pets"]["source"]["sha256"] = sha256(good.env / "pets.tar.gz")
    entry["datasets"]["pets"]["source"]["size"] = len(good.body)
    (good.env / "home" / "data" / "manifest.json").write_text(json.dumps(entry))
    good.refused(("data", "fetch", "pets"), "'pets'", "/broken.tar.gz", *needles)
    assert not good.archive.exists()
    assert not good.archive.with_name("pets.tar.gz.bad").exists()


def test_connection_dropped_mid_file(good: Good) -> None:
    good.archive.unlink()
    good.point_at("/drop.tar.gz", good.body, "drop", len(good.body) // 3)
    err = good.refused(("data", "fetch", "pets"), "'pets'", "/drop.tar.gz")
    assert "connection dropped" in err or "cut short" in err
    assert not good.archive.exists()


# --- archives --------------------------------------------------------------------------


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


@pytest.mark.parametrize(
    ("members", "needle"),
    [
        ([_member("train/cat/ok.jpg"), _member("../evil.txt")], "contains '..'"),
        ([_member("/tmp/tb-evil.txt")], "absolute path"),
        ([_member("train/cat/link", tarfile.SYMTYPE, "../../../outside")], "symlink pointing"),
        ([_member("train/cat/link", tarfile.SYMTYPE, "/etc/passwd")], "symlink pointing"),
        ([_member("train/cat/hard", tarfile.LNKTYPE, "../x")], "hard link pointing outside"),
        ([_member("train/cat/dev", tarfile.CHRTYPE)], "device or fifo"),
        ([_member("train/cat/fifo", tarfile.FIFOTYPE)], "device or fifo"),
    ],
    ids=["dotdot", "absolute", "symlink-up", "symlink-absolute", "hardlink", "device", "fifo"],
)
def test_unsafe_tar_is_refused(good: Good, members: list, needle: str) -> None:
    extracted = files_under(good.data / "archives" / "extracted" / "pets")
    bad = tar_with(good.env / "bad.tar.gz", members)
    good.point_at("/bad.tar.gz", bad.read_bytes())
    good.refused(("data", "fetch", "pets"), "pets.tar.gz", needle, "refusing")
    assert files_under(good.data / "archives" / "extracted" / "pets") == extracted
    assert not Path("/tmp/tb-evil.txt").exists()
    assert not (good.data / "archives" / "evil.txt").exists()


def test_zip_slip_is_refused(good: Good) -> None:
    bad = good.env / "slip.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("train/cat/000.jpg", b"x")
        zf.writestr("train/../../../evil.txt", b"owned")
    good.point_at("/slip.zip", bad.read_bytes())
    good.refused(("data", "fetch", "pets"), "evil.txt", "contains '..'")
    assert not any(p.name == "evil.txt" for p in good.env.rglob("*"))


def test_damaged_archive_is_refused(good: Good) -> None:
    good.point_at("/junk.tar.gz", b"\x1f\x8b not really gzip")
    good.refused(("data", "fetch", "pets"), "not a tar or zip archive")


# --- contents (prepare) ----------------------------------------------------------------


def _variant(good: Good, change: Callable[[Path], None]) -> None:
    """Fetch a copy of the good dataset with ``change`` applied to its folder."""
    src = good.env / "variant"
    shutil.copytree(good.src, src)
    change(src)
    body = make_tar(src, good.env / "variant.tar.gz").read_bytes()
    good.point_at("/variant.tar.gz", body)
    code, _, err = run_cli(good.capsys, "data", "fetch", "pets")
    assert code == 0, err


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_corrupt_jpeg_names_the_file(good: Good, workers: str) -> None:
    _variant(good, lambda src: _truncate(src / "train" / "dog" / "001.jpg"))
    argv = ("data", "prepare", "pets", "--image-size", "16", "--workers", workers)
    good.refused(argv, "dog/001.jpg", "corrupt image", "--skip-corrupt")


def test_skip_corrupt_counts_the_skipped_file(good: Good) -> None:
    _variant(good, lambda src: _truncate(src / "train" / "dog" / "001.jpg"))
    code, out, err = run_cli(
        good.capsys, "data", "prepare", "pets", "--image-size", "12", "--skip-corrupt"
    )
    assert code == 0, err
    assert "skipped 1 corrupt" in out
    meta = cache.read_meta(cache.cache_dir("pets", 12))
    assert meta["skipped_corrupt"] == 1 and meta["splits"]["train"] == 5
    assert meta["skipped_files"][0].endswith("dog/001.jpg")
    from harness.datasets.loader import open_split

    train = open_split("pets", "train", 12)
    assert train.labels.tolist() == [0, 0, 0, 1, 1] and train.images.shape[0] == 5


def test_non_image_file_in_a_class_folder(good: Good) -> None:
    def change(src: Path) -> None:
        (src / "train" / "cat" / "000.jpg").unlink()
        (src / "train" / "cat" / "notes.txt").write_text("not a picture\n")

    _variant(good, change)
    err = good.refused(
        ("data", "prepare", "pets", "--image-size", "16"),
        "cannot decode member 'train/cat/notes.txt' of pets.tar.gz: not an image",
    )
    assert str(good.data) not in err  # the archive member, not the extracted path


def test_empty_class_folder(good: Good) -> None:
    def change(src: Path) -> None:
        for f in (src / "val" / "dog").iterdir():
            f.unlink()

    _variant(good, change)
    good.refused(
        ("data", "prepare", "pets", "--image-size", "16"), "class folder", "val/dog", "is empty"
    )


def test_class_names_disagreeing_with_the_manifest(good: Good) -> None:
    def change(src: Path) -> None:
        (src / "train" / "dog").rename(src / "train" / "cow")

    _variant(good, change)
    good.refused(
        ("data", "prepare", "pets", "--image-size", "16"),
        "disagree with the manifest",
        "missing ['dog']",
        "not in the manifest ['cow']",
    )


def test_split_size_disagreeing_with_the_manifest(good: Good) -> None:
    _variant(good, lambda src: (src / "train" / "cat" / "000.jpg").unlink())
    good.refused(
        ("data", "prepare", "pets", "--image-size", "16"), "split 'train'", "found 5", "says 6"
    )


# --- extraction bounds (bombs) ---------------------------------------------------------

BOMB_BYTES = 64 << 20  # 64 MiB of zeros: ~64 KB compressed, a ratio near 1000


class _Zeros:
    """A file-like object of ``n`` zero bytes that never holds them all in memory."""

    def __init__(self, n: int) -> None:
        self.left = n

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


def _ratio_bomb(path: Path, fmt: str) -> Path:
    """A real-looking dataset plus one member of 64 MiB of zeros."""
    if fmt == "tar.gz":
        with tarfile.open(path, "w:gz", compresslevel=9) as tar:
            info = tarfile.TarInfo("train/cat/000.jpg")
            info.size = BOMB_BYTES
            tar.addfile(info, _Zeros(BOMB_BYTES))  # type: ignore[arg-type]
    else:
        with (
            zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
            zf.open("train/cat/000.jpg", "w", force_zip64=False) as out,
        ):
            zeros = bytes(1 << 20)
            for _ in range(BOMB_BYTES >> 20):
                out.write(zeros)
    return path


def _count_bomb(path: Path, fmt: str, members: int) -> Path:
    """``members`` tiny files: small on disk, a flood of inodes once extracted."""
    names = [f"train/cat/{i:05d}.jpg" for i in range(members)]
    if fmt == "tar.gz":
        with tarfile.open(path, "w:gz") as tar:
            for name in names:
                tar.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    else:
        with zipfile.ZipFile(path, "w") as zf:
            for name in names:
                zf.writestr(name, b"")
    return path


def _status(good: Good) -> dict:
    _, out, _ = run_cli(good.capsys, "data", "list", "--json")
    return {row["name"]: row for row in json.loads(out)}


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_ratio_bomb_is_refused_before_it_lands(good: Good, fmt: str) -> None:
    bomb = _ratio_bomb(good.env / f"bomb.{fmt}", fmt)
    assert bomb.stat().st_size < 1 << 20  # small on disk
    extracted = files_under(good.data / "archives" / "extracted" / "pets")
    archive = good.archive.read_bytes()
    good.point_at(f"/bomb.{fmt}", bomb.read_bytes())
    good.refused(("data", "fetch", "pets"), "pets.tar.gz", "ratio above 100", "refusing")
    # Nothing of the bomb landed; the earlier good archive and extraction are as they were.
    assert files_under(good.data / "archives" / "extracted" / "pets") == extracted
    assert good.archive.read_bytes() == archive
    assert sum(p.stat().st_size for p in good.data.rglob("*") if p.is_file()) < 8 << 20


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_member_count_bomb_is_refused(good: Good, fmt: str) -> None:
    bomb = _count_bomb(good.env / f"many.{fmt}", fmt, 1100)
    good.point_at(f"/many.{fmt}", bomb.read_bytes())
    # The bound: 2 × the 8 declared images + 1000.
    good.refused(("data", "fetch", "pets"), "pets.tar.gz", "more than 1,016 members")
    assert len(list((good.data / "archives" / "extracted" / "pets").rglob("*.jpg"))) == 8


def test_size_bound_from_the_manifest_and_the_environment(
    good: Good, monkeypatch: pytest.MonkeyPatch
) -> None:
    good.point_at("/again.tar.gz", good.body)
    manifest = good.env / "home" / "data" / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["datasets"]["pets"]["layout"]["extract"] = {"max_bytes": 1000}
    manifest.write_text(json.dumps(raw))
    good.archive.unlink()
    good.refused(("data", "fetch", "pets"), "more than 1,000 bytes", "layout.extract.max_bytes")
    monkeypatch.setenv("BENCH_EXTRACT_MAX_BYTES", "10000000")  # the environment wins
    monkeypatch.setenv("BENCH_EXTRACT_MAX_MEMBERS", "3")
    good.refused(("data", "fetch", "pets"), "more than 3 members", "$BENCH_EXTRACT_MAX_MEMBERS")
    monkeypatch.setenv("BENCH_EXTRACT_MAX_MEMBERS", "many")
    good.refused(("data", "fetch", "pets"), "$BENCH_EXTRACT_MAX_MEMBERS='many'")


def test_list_status_after_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused archive is never "fetched"; one refused in place says "refused"."""
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))
    bomb = _ratio_bomb(tmp_path / "bomb.tar.gz", "tar.gz")
    entry = folders_entry(None, bomb, ["cat", "dog"], COUNTS)
    write_manifest(tmp_path / "home", {"pets": entry})
    code, _, err = run_cli(capsys, "data", "fetch", "pets", "--from", str(bomb))
    assert code == 2 and "ratio above 100" in err and err.count("\n") == 1
    _, out, _ = run_cli(capsys, "data", "list", "--json")
    (row,) = json.loads(out)
    assert row["status"] == "pinned" and not row["fetched"]
    files = [p.name for p in (tmp_path / "data").rglob("*") if not p.is_dir()]
    assert files == [".bomb.tar.gz.lock"]  # the fetch's lock; no archive, nothing extracted
    # A good archive, fetched; then its extraction refused where it stands (a lower bound).
    src = make_image_folders(tmp_path / "src", SPLITS)
    good = make_tar(src, tmp_path / "good.tar.gz")
    write_manifest(tmp_path / "home", {"pets": folders_entry(None, good, ["cat", "dog"], COUNTS)})
    assert run_cli(capsys, "data", "fetch", "pets", "--from", str(good))[0] == 0
    _, out, _ = run_cli(capsys, "data", "list", "--json")
    assert json.loads(out)[0]["status"] == "fetched"
    shutil.rmtree(tmp_path / "data" / "archives" / "extracted" / "pets")
    monkeypatch.setenv("BENCH_EXTRACT_MAX_MEMBERS", "2")
    code, _, err = run_cli(capsys, "data", "prepare", "pets", "--image-size", "8")
    assert code == 2 and "more than 2 members" in err and err.count("\n") == 1
    _, out, _ = run_cli(capsys, "data", "list", "--json")
    (row,) = json.loads(out)
    assert row["status"] == "refused" and not row["fetched"]
    assert not (tmp_path / "data" / "archives" / "extracted" / "pets").exists()
    assert not (tmp_path / "data" / "prepared" / "pets" / "8").exists()


def test_lying_zip_header_is_refused(good: Good) -> None:
    """A member whose header claims fewer bytes than its data: nothing of it is kept."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train/cat/000.jpg", bytes(4 << 20))
    raw = bytearray(buf.getvalue())
    real = (4 << 20).to_bytes(4, "little")
    for at in [i for i in range(len(raw) - 3) if raw[i : i + 4] == real]:
        raw[at : at + 4] = (100).to_bytes(4, "little")  # local and central "file size"
    good.point_at("/liar.zip", bytes(raw))
    good.refused(("data", "fetch", "pets"), "pets.tar.gz")
    assert len(list((good.data / "archives" / "extracted" / "pets").rglob("*.jpg"))) == 8


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs the test mounts itself (skipped where mounting is not allowed)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_too_little_free_disk_is_refused_before_writing(
    small_disk: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BENCH_DATA_DIR", str(small_disk / "data"))
    src = make_image_folders(tmp_path / "src", SPLITS)
    (src / "train" / "cat" / "noise.bin").write_bytes(os.urandom(8 << 20))  # incompressible
    archive = make_tar(src, tmp_path / "pets.tar.gz")
    write_manifest(
        tmp_path / "home", {"pets": folders_entry(None, archive, ["cat", "dog"], COUNTS)}
    )
    code, _, err = run_cli(capsys, "data", "fetch", "pets", "--from", str(archive))
    assert code == 2 and err.count("\n") == 1, err
    assert "needs 8," in err and "free in" in err and "BENCH_DATA_DIR" in err
    left = [p for p in (small_disk / "data").rglob("*") if p.is_file() and p.suffix != ".lock"]
    assert left == []
