"""Awkward but legal images, from Pillow's own test suite, packed by GNU tar and Info-ZIP.

Every image mode a real dataset holds becomes the 8-bit RGB a viewer shows: EXIF-rotated
JPEGs upright, 16-bit grayscale with its contrast, alpha composited onto white, CMYK and
palettes converted; ``meta.json`` counts the conversions. A decompression bomb is named
and refused even with ``--skip-corrupt``. The material is in ``tests/material`` (README).
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import folders_entry, png_declaring, run_cli, write_manifest
from PIL import Image

from harness.datasets import cache
from harness.datasets.decode import ImageTooLarge, open_image
from harness.datasets.loader import open_split
from harness.errors import InputError

MATERIAL = Path(__file__).resolve().parent / "material"
SIZE = 64
ROTATED = ("hopper_orientation_3.jpg", "hopper_orientation_6.jpg", "hopper_orientation_8.jpg")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def _tree(root: Path) -> dict[str, list[str]]:
    """train/a: every material file plus a 16-bit PNG of the TIFF's pixels; val/a: hopper;
    class b (a dataset needs two): hopper in train and val."""
    train = root / "train" / "a"
    train.mkdir(parents=True)
    for f in MATERIAL.iterdir():
        if f.suffix != ".md":
            shutil.copy(f, train / f.name)
    with Image.open(MATERIAL / "16bit.cropped.tif") as im:
        assert im.mode == "I;16"
        im.save(train / "16bit.png")  # Pillow writes a 16-bit grayscale PNG
    val = root / "val" / "a"
    val.mkdir(parents=True)
    shutil.copy(MATERIAL / "hopper.jpg", val / "hopper.jpg")
    for split in ("train", "val"):
        (root / split / "b").mkdir(parents=True)
        shutil.copy(MATERIAL / "hopper.jpg", root / split / "b" / "hopper.jpg")
    return {"train": sorted(p.name for p in train.iterdir()), "val": ["hopper.jpg"]}


def _pack(tool: str, src: Path, out: Path) -> Path:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (apt-get install {tool})")
    if tool == "tar":
        cmd = ["tar", "-czf", str(out), "-C", str(src), "train", "val"]
    else:
        cmd = ["zip", "-q", "-r", str(out), "train", "val"]
    subprocess.run(cmd, cwd=src, check=True)
    return out


def _prepared(env: Path, capsys: pytest.CaptureFixture[str], tool: str) -> dict[str, list[str]]:
    names = _tree(env / "src")
    archive = _pack(tool, env / "src", env / ("awkward.tar.gz" if tool == "tar" else "awk.zip"))
    counts = {split: len(files) + 1 for split, files in names.items()}  # + b's one image
    write_manifest(env / "home", {"awkward": folders_entry(None, archive, ["a", "b"], counts)})
    code, _, err = run_cli(capsys, "data", "fetch", "awkward", "--from", str(archive))
    assert code == 0, err
    code, out, err = run_cli(capsys, "data", "prepare", "awkward", "--image-size", str(SIZE))
    assert code == 0, err
    assert "converted:" in out
    return names


def _row(names: dict[str, list[str]], name: str) -> np.ndarray:
    return np.asarray(open_split("awkward", "train", SIZE).images[names["train"].index(name)])


@pytest.mark.parametrize("tool", ["tar", "zip"])
def test_awkward_images_decode_as_a_viewer_shows_them(
    env: Path, capsys: pytest.CaptureFixture[str], tool: str
) -> None:
    names = _prepared(env, capsys, tool)
    upright = _row(names, "hopper.jpg").astype(int)

    # EXIF orientation: each rotated file, once turned upright, matches the upright portrait
    # (up to JPEG re-encoding); read raw, it would not.
    for name in ROTATED:
        assert np.abs(_row(names, name).astype(int) - upright).mean() < 8, name
        with Image.open(MATERIAL / name) as im:
            raw = np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
        assert np.abs(raw.astype(int) - upright).mean() > 30, name

    # 16-bit grayscale keeps its contrast: values 291…694 stretched over 0…255, by the rule.
    with Image.open(MATERIAL / "16bit.cropped.tif") as im:
        v = np.asarray(im).astype(np.int64)
    want = ((v - v.min()) * 255 + (v.max() - v.min()) // 2) // (v.max() - v.min())
    for name in ("16bit.png", "16bit.cropped.tif"):
        row = _row(names, name)
        assert np.array_equal(row[..., 0], want) and np.array_equal(row[..., 2], want), name
        assert row.min() == 0 and row.max() == 255 and len(np.unique(row)) > 100  # was 1

    # Alpha composited onto white: LA, and a palette with one transparent index.
    with Image.open(MATERIAL / "uncompressed_la.png") as im:
        la = np.asarray(im).astype(np.int64)
    white = (la[..., 0] * la[..., 1] + 255 * (255 - la[..., 1]) + 127) // 255
    small = Image.fromarray(white.astype(np.uint8)).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    assert (
        np.abs(_row(names, "uncompressed_la.png")[..., 0].astype(int) - np.asarray(small)).max()
        <= 1
    )
    with Image.open(MATERIAL / "p_trns_single.png") as im:
        clear = np.asarray(im) == im.info["transparency"]
    p_row = _row(names, "p_trns_single.png")
    assert clear.any() and (p_row[clear] == 255).all()

    # CMYK converted to RGB (Pillow's conversion), not four channels cut to three.
    with Image.open(MATERIAL / "pil_sample_cmyk.jpg") as im:
        assert im.mode == "CMYK"
        cmyk = np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    assert np.array_equal(_row(names, "pil_sample_cmyk.jpg"), cmyk)

    meta = cache.read_meta(cache.cache_dir("awkward", SIZE))
    assert meta["conversions"] == {
        "alpha": 3,  # uncompressed_la, p_trns_single, i_trns (16-bit with tRNS)
        "cmyk": 1,
        "exif-orientation": 3,
        "grayscale": 2,  # the 16-bit TIFF and PNG
        "high-bit-depth": 3,  # ... and i_trns
    }


def _png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width``×``height`` 8-bit grayscale pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("width", "needle"),
    [(10_000, "10,000×10,000 = 100,000,000 pixels"), (30_000, "900,000,000 pixels")],
    ids=["over-the-limit", "pillow-bomb-error"],
)
def test_decompression_bomb_image_is_named_and_refused(
    env: Path, capsys: pytest.CaptureFixture[str], width: int, needle: str
) -> None:
    src = env / "src"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (src / split / cls).mkdir(parents=True)
            shutil.copy(MATERIAL / "hopper.jpg", src / split / cls / "hopper.jpg")
    (src / "train" / "a" / "huge.png").write_bytes(_png(width, width))
    archive = _pack("tar", src, env / "bomb.tar.gz")
    counts = {"train": 3, "val": 2}
    write_manifest(env / "home", {"b": folders_entry(None, archive, ["a", "b"], counts)})
    assert run_cli(capsys, "data", "fetch", "b", "--from", str(archive))[0] == 0
    for extra in ((), ("--skip-corrupt",)):  # a bomb is not a corrupt file to skip
        code, _, err = run_cli(capsys, "data", "prepare", "b", "--image-size", "16", *extra)
        assert code == 2 and err.count("\n") == 1, err
        assert "member 'train/a/huge.png' of bomb.tar.gz" in err and needle in err
        assert "above the decompression-bomb limit of 89,478,485 pixels" in err
        assert str(env / "data") not in err  # the member, not the extracted path
        assert not (env / "data" / "prepared" / "b" / "16").exists()
        assert [p for p in (env / "data" / "prepared").rglob("*") if "staging" in p.name] == []


def _gif_with_a_frame_of(side: int) -> bytes:
    """An 8×8 GIF (Pillow's own) with a second frame whose descriptor claims side×side px:
    Pillow judges its size only when it seeks to that frame, after the file is open."""
    buf = io.BytesIO()
    Image.new("L", (8, 8), 0).save(buf, "GIF")
    one = buf.getvalue()
    frame = one[one.index(b",") : -1]  # descriptor + LZW data of the first frame
    return one[:-1] + b"," + struct.pack("<HHHH", 0, 0, side, side) + frame[9:] + b";"


def _bomb_warnings(seen: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]


def test_open_image_is_where_every_bomb_becomes_an_input_error(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow's DecompressionBombError and DecompressionBombWarning, at open or later (a GIF
    frame), are one ImageTooLarge (exit 2) naming the file as the caller shows it."""
    monkeypatch.delenv("BENCH_MAX_IMAGE_PIXELS", raising=False)
    files = {
        "huge.png": png_declaring(200_000, 200_000),  # Pillow's error at open
        "big.png": png_declaring(10_000, 10_000),  # Pillow's warning at open
        "error.gif": _gif_with_a_frame_of(20_000),  # Pillow's error at seek(1)
        "warning.gif": _gif_with_a_frame_of(12_000),  # Pillow's warning at seek(1)
    }
    said = {
        "huge.png": "declares 40,000,000,000 pixels",
        "big.png": "declares 10,000×10,000 = 100,000,000 pixels",
        "error.gif": "declares 400,000,000 pixels",
        "warning.gif": "declares 144,000,000 pixels",
    }
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for name, data in files.items():
            (env / name).write_bytes(data)
            with pytest.raises(InputError) as refused, open_image(env / name, f"m/{name}") as im:
                im.seek(1) if name.endswith(".gif") else im.load()
            assert isinstance(refused.value, ImageTooLarge) and refused.value.exit_code == 2
            assert str(refused.value) == (
                f"m/{name}: {said[name]}, above the decompression-bomb limit of 89,478,485 "
                "pixels ($BENCH_MAX_IMAGE_PIXELS raises it); refusing to decode it"
            )
    assert _bomb_warnings(seen) == []  # turned into the error, never printed

    # The environment raises the limit: 10,000² opens and a 12,000² frame is read, silently.
    monkeypatch.setenv("BENCH_MAX_IMAGE_PIXELS", "150000000")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with open_image(env / "big.png") as im:
            assert im.size == (10_000, 10_000)
        with open_image(env / "warning.gif") as im:
            im.seek(1)
            assert im.size == (12_000, 12_000)
    assert _bomb_warnings(seen) == []
