"""Decode and resize images with Pillow into rows of a uint8 cache file.

These functions run in worker processes (or inline for one worker): each task decodes a
chunk of files, or resizes a chunk of in-memory images, and writes the S×S×3 RGB rows
straight into the staging ``.npy`` memmap, so no pixels travel back to the parent.
Grayscale is replicated to RGB; the resize is bilinear with antialiasing, to S×S.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

_RESAMPLE = Image.Resampling.BILINEAR
_open_out: dict[str, np.ndarray] = {}


class DecodeError(Exception):
    """A file that is not a decodable image (kept picklable: path and reason only)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Decode ``path`` and resize it to ``size``×``size`` RGB uint8."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when >= 2× larger
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), _RESAMPLE)
            return np.asarray(im, dtype=np.uint8)
    except Image.UnidentifiedImageError:
        raise DecodeError(str(path), "not an image (Pillow cannot identify it)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DecodeError(str(path), f"corrupt image ({exc})") from None


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


def decode_files(
    out_path: str, start: int, files: Sequence[str], size: int, stop_on_error: bool
) -> list[tuple[int, str, str]]:
    """Decode ``files`` into rows ``start…`` of ``out_path``; returns failures (row, path, why)."""
    out = _out(out_path)
    failures = []
    for i, path in enumerate(files):
        try:
            out[start + i] = load_image(path, size)
        except DecodeError as exc:
            failures.append((start + i, exc.path, exc.reason))
            if stop_on_error:
                break
    return failures  # no msync per chunk: the parent reads the rows back via the page cache


def resize_rows(out_path: str, start: int, images: np.ndarray, size: int) -> list:
    """Resize in-memory ``images`` into rows ``start…`` of ``out_path`` (never fails per row)."""
    out = _out(out_path)
    for i, image in enumerate(images):
        out[start + i] = resize_array(image, size)
    return []
