"""Decode and resize images with Pillow into rows of a uint8 RGB cache file.

These functions run in worker processes (or inline for one worker): each task decodes a
chunk of files, or resizes a chunk of in-memory images, and writes the S×S×3 RGB rows
straight into the staging ``.npy`` memmap, so no pixels travel back to the parent.

Every common image mode becomes 8-bit RGB by one documented rule, and each image reports
which conversions it needed (counted in the cache's ``meta.json``, under ``conversions``):

- ``exif-orientation``: the EXIF orientation tag (2–8) is applied first, so the pixels
  are upright as a viewer shows them (``PIL.ImageOps.exif_transpose``).
- ``grayscale``: ``L`` (and bilevel ``1``, also counted as ``bilevel``) is replicated to
  three equal channels.
- ``high-bit-depth``: 16-bit (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``), 32-bit integer
  (``I``) and float (``F``) images are scaled to 8 bits by the image's own range:
  ``round((v - min) × 255 / (max - min))``, so a 16-bit file that uses 10 or 12 of its bits
  keeps its contrast instead of turning white (``convert("RGB")`` clips at 255); a constant
  image becomes 0. Integer images are scaled in exact integer arithmetic, float images in
  float64 with NaN as the minimum and ±inf clipped to the finite range, so the result is the
  same on every CPU.
- ``alpha``: ``LA``, ``RGBA``, ``PA``, ``La``, ``RGBa`` and any image with a transparency
  entry (``P``, ``L``, ``RGB``, ``I;16`` with ``tRNS``) is composited onto **white**, as
  a browser shows it on a white page, rather than exposing whatever colour the
  transparent pixels happen to hold.
- ``palette`` (``P``), ``cmyk`` (``CMYK``, Pillow's conversion) and ``other:<MODE>``
  (``YCbCr``, ``LAB``, ``HSV``…) convert to RGB.

Every image the harness reads is opened by :func:`open_image`: an image whose header
declares more than ``max_pixels`` (Pillow's decompression-bomb limit, 89,478,485 pixels,
or ``$BENCH_MAX_IMAGE_PIXELS``) is refused before it is decoded, and Pillow's own
``DecompressionBombError`` / ``DecompressionBombWarning``, wherever they fire, become the
same :class:`ImageTooLarge` (an input error, exit 2) naming the file as the caller shows
it (an archive member, not a temporary path). ``prepare`` refuses it even with
``--skip-corrupt``. The resize is bilinear with antialiasing, to S×S.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from harness.errors import InputError

_RESAMPLE = Image.Resampling.BILINEAR
_ORIENTATION = ExifTags.Base.Orientation
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("LA", "RGBA", "PA", "La", "RGBa")
ENV_MAX_PIXELS = "BENCH_MAX_IMAGE_PIXELS"
_open_out: dict[str, np.ndarray] = {}


class DecodeError(Exception):
    """A file that is not a decodable image (kept picklable: path and reason only).

    ``fatal`` errors (a decompression bomb) are refused even with ``--skip-corrupt``.
    """

    def __init__(self, path: str, reason: str, fatal: bool = False) -> None:
        super().__init__(path, reason, fatal)
        self.path = path
        self.reason = reason
        self.fatal = fatal


def max_pixels() -> int:
    """The largest image (width × height) decoded: Pillow's bomb limit or the environment's."""
    raw = os.environ.get(ENV_MAX_PIXELS)
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value > 0:
            return value
    return int(Image.MAX_IMAGE_PIXELS or 89_478_485)


class ImageTooLarge(InputError):
    """An image above the decompression-bomb limit (exit 2); ``reason`` without the name."""

    def __init__(self, shown: str, reason: str) -> None:
        super().__init__(f"{shown}: {reason}")
        self.shown = shown
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.shown, self.reason)


def _too_large(shown: str, limit: int, pixels: int | None, size: str = "") -> ImageTooLarge:
    said = f"declares {size}{pixels:,} pixels" if pixels is not None else "is too large"
    return ImageTooLarge(
        shown,
        f"{said}, above the decompression-bomb limit of {limit:,} pixels "
        f"(${ENV_MAX_PIXELS} raises it); refusing to decode it",
    )


def _pillow_pixels(exc: Exception) -> int | None:
    """The pixel count in Pillow's bomb message ("Image size (N pixels) exceeds …")."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return int(found.group(1)) if found else None


@contextlib.contextmanager
def open_image(path: str | Path, shown: str | None = None) -> Iterator[Image.Image]:
    """``Image.open(path)`` within the decompression-bomb limit (:func:`max_pixels`).

    An image whose declared width × height is above the limit, and Pillow's own
    ``DecompressionBombError`` or ``DecompressionBombWarning`` raised at open or later in
    the ``with`` block (a frame, a tile), are :class:`ImageTooLarge` naming ``shown``
    (default: ``path``). Other errors (not an image, truncated…) pass through as Pillow
    raises them.
    """
    shown = str(path) if shown is None else shown
    limit = max_pixels()
    # Above Pillow's own limit (raised by the environment) its warning is not a refusal.
    pillow_limit = Image.MAX_IMAGE_PIXELS
    later = "error" if pillow_limit is not None and limit <= pillow_limit else "ignore"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # judged below
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise _too_large(shown, limit, _pillow_pixels(exc)) from None
    with im:
        w, h = im.size
        if w * h > limit:
            raise _too_large(shown, limit, w * h, f"{w:,}×{h:,} = ")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter(later, Image.DecompressionBombWarning)
                yield im
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_large(shown, limit, _pillow_pixels(exc)) from None


def _scale_to_8bit(im: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float image as ``L``, stretched over its own range (module doc)."""
    arr = np.asarray(im)
    if arr.dtype.kind == "f":
        a = arr.astype(np.float64)
        finite = a[np.isfinite(a)]
        if finite.size == 0:
            return Image.new("L", im.size, 0)
        lo, hi = float(finite.min()), float(finite.max())
        a = np.nan_to_num(np.clip(a, lo, hi), nan=lo)
        if hi == lo:
            return Image.new("L", im.size, 0)
        out = np.floor((a - lo) * 255.0 / (hi - lo) + 0.5)
        return Image.fromarray(out.astype(np.uint8), "L")
    a = arr.astype(np.int64)
    lo, hi = int(a.min()), int(a.max())
    if hi == lo:
        return Image.new("L", im.size, 0)
    span = hi - lo
    out = ((a - lo) * 255 + span // 2) // span
    return Image.fromarray(out.astype(np.uint8), "L")


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_8bit(im: Image.Image, tags: list[str]) -> Image.Image:
    """``im`` as ``RGB`` or ``L`` (8 bits per channel), by the module's rules; notes in ``tags``."""
    mode = im.mode
    transparent = "transparency" in im.info
    if mode == "RGB" and not transparent:
        return im
    if mode == "L" and not transparent:
        tags.append("grayscale")
        return im
    if mode in _HIGH_DEPTH:
        tags.append("high-bit-depth")
        out = _scale_to_8bit(im)
        trns = im.info.get("transparency")
        if isinstance(trns, int) and not isinstance(trns, bool):
            tags.append("alpha")
            alpha = Image.fromarray(np.where(np.asarray(im) == trns, 0, 255).astype(np.uint8))
            out = _on_white(Image.merge("RGBA", (out, out, out, alpha)))
        else:
            tags.append("grayscale")
        return out
    if mode in _ALPHA_MODES or transparent:
        tags.append("alpha")
        return _on_white(im.convert("RGBA"))
    if mode == "1":
        tags += ["bilevel", "grayscale"]
        return im.convert("L")
    if mode == "P":
        tags.append("palette")
    elif mode == "CMYK":
        tags.append("cmyk")
    else:
        tags.append(f"other:{mode}")
    return im.convert("RGB")


def load_image(path: str | Path, size: int, tags: list[str] | None = None) -> np.ndarray:
    """Decode ``path`` and resize it to ``size``×``size`` RGB uint8 (module doc for the rules)."""
    tags = [] if tags is None else tags
    try:
        with open_image(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when >= 2× larger
            upright: Image.Image = im
            orientation = im.getexif().get(_ORIENTATION)
            if isinstance(orientation, int) and 2 <= orientation <= 8:
                upright = ImageOps.exif_transpose(im)
                tags.append("exif-orientation")
            out = to_8bit(upright, tags)
            if out.size != (size, size):
                out = out.resize((size, size), _RESAMPLE)
            arr = np.asarray(out, dtype=np.uint8)
    except ImageTooLarge as exc:
        raise DecodeError(str(path), exc.reason, fatal=True) from None
    except Image.UnidentifiedImageError:
        raise DecodeError(str(path), "not an image (Pillow cannot identify it)") from None
    except (OSError, SyntaxError, ValueError, TypeError) as exc:
        raise DecodeError(str(path), f"corrupt image ({exc})") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return arr


def resize_array(image: np.ndarray, size: int) -> np.ndarray:
    """An in-memory H×W, H×W×1 or H×W×3 uint8 image as ``size``×``size`` RGB."""
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), _RESAMPLE))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image


def _out(path: str) -> np.ndarray:
    """The staging memmap at ``path``, opened once per worker process."""
    out = _open_out.get(path)
    if out is None:
        _open_out.clear()
        out = _open_out[path] = np.load(path, mmap_mode="r+")
    return out


Failure = tuple[int, str, str, bool]  # (row, path, why, fatal)


def decode_files(
    out_path: str, start: int, files: Sequence[str], size: int, stop_on_error: bool
) -> tuple[list[Failure], Counter[str]]:
    """Decode ``files`` into rows ``start…`` of ``out_path``.

    Returns the failures (row, path, why, fatal) and how many images needed each conversion.
    """
    out = _out(out_path)
    failures: list[Failure] = []
    counts: Counter[str] = Counter()
    for i, path in enumerate(files):
        tags: list[str] = []
        try:
            out[start + i] = load_image(path, size, tags)
        except DecodeError as exc:
            failures.append((start + i, exc.path, exc.reason, exc.fatal))
            if stop_on_error or exc.fatal:
                break
            continue
        counts.update(set(tags))
    return failures, counts  # no msync per chunk: the parent reads rows via the page cache


def resize_rows(
    out_path: str, start: int, images: np.ndarray, size: int
) -> tuple[list[Failure], Counter[str]]:
    """Resize in-memory ``images`` into rows ``start…`` of ``out_path`` (never fails per row)."""
    out = _out(out_path)
    for i, image in enumerate(images):
        out[start + i] = resize_array(image, size)
    gray = images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 1)
    return [], Counter({"grayscale": len(images)} if gray else {})
