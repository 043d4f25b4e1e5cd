"""Deterministic synthetic image datasets (numpy only): the offline stand-ins for real data.

Two generators, named with their version so that a change of rendering is a new name:

- ``shapes-v1``: a textured shape (disc, square, ... × solid, stripes, ...) on a cluttered,
  noisy background. The class is the (shape, texture) pair, written ``"shape-texture"``;
  position, scale, rotation, texture frequency and phase, colours, background and clutter are
  nuisances drawn per image, so that class identity lives in form, not in colour or place —
  which is what makes a backbone pretrained on one set of pairs useful on another.
  ``params``: ``{"classes": ["disc-stripes", ...]}`` plus optional ``noise`` and ``clutter``.
- ``xray-v1``: grayscale, smooth radial "chest-like" fields (two dark lobes, faint arcs, film
  grain); class ``opacity`` adds a diffuse bright patch inside a lobe. A domain unlike the shapes.
  ``params``: ``{"classes": ["normal", "opacity"]}`` plus optional ``noise`` and ``opacity``.

Every split has its own random stream derived from ``(seed, split name)``, so one split's
size never changes another split's images. Labels are balanced (counts differ by at most one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from harness.errors import InputError

SHAPES: tuple[str, ...] = (
    "disc",
    "square",
    "triangle",
    "ring",
    "plus",
    "diamond",
    "star",
    "bars",
)
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "dots", "rings", "gradient")
XRAY_CLASSES: tuple[str, ...] = ("normal", "opacity")
GENERATORS: tuple[str, ...] = ("shapes-v1", "xray-v1")

# Pixels per chunk: bounds the float32 work arrays (~4 MiB each) whatever the image size.
_CHUNK_PIXELS = 1 << 20


class SyntheticSourceLike(Protocol):
    """What :func:`generate` needs from the manifest's ``SyntheticSource``."""

    generator: str
    seed: int
    params: Mapping[str, Any]


# --------------------------------------------------------------------------- public API


def class_names(source: SyntheticSourceLike) -> tuple[str, ...]:
    """The class names of a synthetic source, in label order."""
    if source.generator == "shapes-v1":
        return tuple(f"{s}-{t}" for s, t in _shape_classes(source))
    if source.generator == "xray-v1":
        names = tuple(source.params.get("classes", XRAY_CLASSES))
        if names != XRAY_CLASSES:
            raise InputError(
                f"synthetic xray-v1: params.classes must be {list(XRAY_CLASSES)}, got {list(names)}"
            )
        return names
    raise InputError(
        f"synthetic source: unknown generator {source.generator!r} (known: {', '.join(GENERATORS)})"
    )


def generate(
    source: SyntheticSourceLike, splits: Mapping[str, int], image_size: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Render every split: ``{split: (uint8 N×S×S×3 images, int32 N labels)}``.

    Deterministic in ``(source.generator, source.seed, source.params, split name, size)``.
    """
    names = class_names(source)  # validates generator and params
    if not isinstance(image_size, int) or image_size < 8:
        raise InputError(
            f"synthetic {source.generator}: image_size must be an integer >= 8, got {image_size!r}"
        )
    render = _render_shapes if source.generator == "shapes-v1" else _render_xray
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, count in splits.items():
        if not isinstance(count, int) or count < 0:
            raise InputError(
                f"synthetic split {split!r}: size must be an integer >= 0, got {count!r}"
            )
        rng = np.random.Generator(np.random.PCG64(_split_seed(source.seed, split)))
        labels = rng.permutation(np.arange(count, dtype=np.int64) % len(names)).astype(np.int32)
        images = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
        chunk = max(1, _CHUNK_PIXELS // (image_size * image_size))
        for start in range(0, count, chunk):
            stop = min(count, start + chunk)
            gray_or_rgb = render(rng, labels[start:stop], image_size, source)
            images[start:stop] = _to_uint8(gray_or_rgb)
        out[split] = (images, labels)
    return out


# --------------------------------------------------------------------------- helpers


def _split_seed(seed: int, split: str) -> np.random.SeedSequence:
    """An independent stream per (seed, split name), stable across Python runs."""
    key = int.from_bytes(hashlib.sha256(split.encode()).digest()[:8], "little")
    return np.random.SeedSequence([int(seed), key])


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] (N×S×S gray or N×S×S×3) to uint8 RGB."""
    x = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if x.ndim == 3:
        x = np.repeat(x[..., None], 3, axis=-1)
    return x


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], shape (1, S, S) each."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    yy, xx = np.meshgrid(c, c, indexing="ij")
    return yy[None], xx[None]


def _col(a: np.ndarray) -> np.ndarray:
    """Per-image scalars (N,) broadcastable against (N, S, S)."""
    return a.astype(np.float32)[:, None, None]


def _shape_classes(source: SyntheticSourceLike) -> list[tuple[str, str]]:
    raw = source.params.get("classes")
    if not isinstance(raw, list) or len(raw) < 2:
        raise InputError(
            f"synthetic shapes-v1: params.classes must be a list of >= 2 'shape-texture' names, "
            f"got {raw!r}"
        )
    pairs: list[tuple[str, str]] = []
    for name in raw:
        shape, _, texture = str(name).partition("-")
        if shape not in SHAPES or texture not in TEXTURES:
            raise InputError(
                f"synthetic shapes-v1: class {name!r} is not 'shape-texture' with shape in "
                f"{list(SHAPES)} and texture in {list(TEXTURES)}"
            )
        pairs.append((shape, texture))
    if len(set(pairs)) != len(pairs):
        raise InputError(f"synthetic shapes-v1: params.classes has duplicates: {raw!r}")
    return pairs


# --------------------------------------------------------------------------- shapes-v1

# Each mask function maps local coordinates (u, v), unit radius, to a boolean mask.
_MASKS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disc": lambda u, v: u * u + v * v < 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) < 0.8,
    "triangle": lambda u, v: (v > -0.5) & (v < 1.0 - 1.732 * np.abs(u)),
    "ring": lambda u, v: (u * u + v * v < 1.0) & (u * u + v * v > 0.36),
    "plus": lambda u, v: (
        ((np.abs(u) < 0.32) | (np.abs(v) < 0.32)) & (np.maximum(np.abs(u), np.abs(v)) < 1.0)
    ),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) < 1.0,
    "star": lambda u, v: np.sqrt(u * u + v * v) < 0.55 + 0.45 * np.cos(5.0 * np.arctan2(v, u)),
    "bars": lambda u, v: (np.abs(u) < 0.9) & (np.abs(np.abs(v) - 0.5) < 0.25),
}

# Each texture maps (u, v, frequency, phase) to a value in [0, 1] blending two colours.
_TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "solid": lambda u, v, f, p: np.ones_like(u),
    "stripes": lambda u, v, f, p: (np.sin(u * f + p) > 0).astype(np.float32),
    "checker": lambda u, v, f, p: (np.sin(u * f + p) * np.sin(v * f + p) > 0).astype(np.float32),
    "dots": lambda u, v, f, p: (np.cos(u * f * 0.8 + p) + np.cos(v * f * 0.8 + p) > 0.9).astype(
        np.float32
    ),
    "rings": lambda u, v, f, p: (np.sin(np.sqrt(u * u + v * v) * f * 1.3 + p) > 0).astype(
        np.float32
    ),
    "gradient": lambda u, v, f, p: np.clip(0.5 + 0.5 * u, 0.0, 1.0),
}


def _random_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=(n, 3)).astype(np.float32)


def _render_shapes(
    rng: np.random.Generator, labels: np.ndarray, size: int, source: SyntheticSourceLike
) -> np.ndarray:
    """Render N×S×S×3 floats in [0, 1] for ``labels`` (indices into params.classes)."""
    pairs = _shape_classes(source)
    noise = float(source.params.get("noise", 0.04))
    clutter = int(source.params.get("clutter", 1))
    n = len(labels)
    yy, xx = _grid(size)

    # Nuisances, drawn in a fixed order so the stream is reproducible.
    cx, cy = rng.uniform(-0.25, 0.25, (2, n))
    radius = rng.uniform(0.55, 0.8, n)
    theta = rng.uniform(0.0, 2.0 * np.pi, n)
    freq = rng.uniform(5.0, 7.0, n)
    phase = rng.uniform(0.0, 2.0 * np.pi, n)
    colour_a = _random_colours(rng, n)
    colour_b = _random_colours(rng, n)
    bg = _random_colours(rng, n)
    kx, ky, kp, amp = rng.uniform(-1.0, 1.0, (4, n))  # a low-frequency shading wave
    # Keep the two texture colours apart so the texture stays visible.
    low_contrast = np.abs(colour_a - colour_b).sum(axis=1) < 0.6
    colour_b[low_contrast] = 1.0 - colour_a[low_contrast]
    # ... and the object apart from the background, in brightness.
    lum = np.array([0.3, 0.59, 0.11], dtype=np.float32)
    close = np.abs(bg @ lum - (colour_a + colour_b) @ lum / 2) < 0.25
    bg[close] = 1.0 - bg[close]

    # Background: a colour with a low-frequency shading wave.
    img = np.empty((n, size, size, 3), dtype=np.float32)
    wave = _col(amp * 0.15) * np.sin(_col(kx * 3) * xx + _col(ky * 3) * yy + _col(kp * 3))
    img[:] = bg[:, None, None, :]
    img += wave[..., None]

    # Clutter: small solid blobs and thin lines in random colours.
    for _ in range(clutter):
        kx, ky = rng.uniform(-1.0, 1.0, (2, n))
        kr = rng.uniform(0.06, 0.16, n)
        ang = rng.uniform(0.0, np.pi, n)
        is_line = rng.uniform(0.0, 1.0, n) < 0.5
        colour = _random_colours(rng, n)
        dx, dy = xx - _col(kx), yy - _col(ky)
        blob = dx * dx + dy * dy < _col(kr) ** 2
        along = dx * _col(np.cos(ang)) + dy * _col(np.sin(ang))
        across = -dx * _col(np.sin(ang)) + dy * _col(np.cos(ang))
        line = (np.abs(across) < 0.045) & (np.abs(along) < _col(kr) * 4)
        mask = np.where(is_line[:, None, None], line, blob)
        img = np.where(mask[..., None], colour[:, None, None, :], img)

    # The object, in its own rotated, scaled frame.
    dx, dy = xx - _col(cx), yy - _col(cy)
    cos, sin = _col(np.cos(theta)), _col(np.sin(theta))
    u = (dx * cos + dy * sin) / _col(radius)
    v = (-dx * sin + dy * cos) / _col(radius)
    shape_of = np.array([SHAPES.index(pairs[k][0]) for k in labels], dtype=np.int64)
    texture_of = np.array([TEXTURES.index(pairs[k][1]) for k in labels], dtype=np.int64)
    mask = np.zeros((n, size, size), dtype=bool)
    blend = np.zeros((n, size, size), dtype=np.float32)
    for i, name in enumerate(SHAPES):
        idx = np.flatnonzero(shape_of == i)
        if idx.size:
            mask[idx] = _MASKS[name](u[idx], v[idx])
    for i, name in enumerate(TEXTURES):
        idx = np.flatnonzero(texture_of == i)
        if idx.size:
            blend[idx] = _TEXTURES[name](u[idx], v[idx], _col(freq[idx]), _col(phase[idx]))
    fg = (
        blend[..., None] * colour_a[:, None, None, :]
        + (1.0 - blend[..., None]) * colour_b[:, None, None, :]
    )
    img = np.where(mask[..., None], fg, img)

    img += rng.normal(0.0, noise, img.shape).astype(np.float32)
    return img


# --------------------------------------------------------------------------- xray-v1


def _render_xray(
    rng: np.random.Generator, labels: np.ndarray, size: int, source: SyntheticSourceLike
) -> np.ndarray:
    """Render N×S×S grayscale floats in [0, 1]; label 1 carries a diffuse opacity."""
    noise = float(source.params.get("noise", 0.04))
    strength = float(source.params.get("opacity", 0.35))
    n = len(labels)
    yy, xx = _grid(size)

    brightness = rng.uniform(0.55, 0.8, n)
    tilt = rng.uniform(-0.15, 0.15, n)
    shift = rng.uniform(-0.08, 0.08, (2, n))
    lobe_w = rng.uniform(0.22, 0.3, n)
    lobe_h = rng.uniform(0.5, 0.65, n)
    rib_f = rng.uniform(14.0, 20.0, n)
    rib_p = rng.uniform(0.0, 2.0 * np.pi, n)
    side = rng.integers(0, 2, n) * 2 - 1
    op_pos = rng.uniform(-1.0, 1.0, (2, n))
    op_r = rng.uniform(0.15, 0.28, n)

    x = xx - _col(shift[0]) + _col(tilt) * yy
    y = yy - _col(shift[1])
    body = np.exp(-(((x / 0.95) ** 2) ** 2) - (y / 1.1) ** 4)  # soft radial falloff
    img = _col(brightness) * body

    def lobe(sign: float) -> np.ndarray:
        d = ((x - sign * 0.42) / _col(lobe_w)) ** 2 + (y / _col(lobe_h)) ** 2
        return np.exp(-(d**2))

    lungs = lobe(-1.0) + lobe(1.0)
    img = img - 0.38 * lungs
    img = img + 0.05 * lungs * np.sin(np.sqrt(x * x + (y + 1.2) ** 2) * _col(rib_f) + _col(rib_p))

    # The opacity: a diffuse gaussian patch inside one lobe (positive class only).
    ox = _col(side * 0.42) + _col(op_pos[0]) * _col(lobe_w) * 0.6
    oy = _col(op_pos[1]) * _col(lobe_h) * 0.6
    patch = np.exp(-(((x - ox) ** 2 + (y - oy) ** 2) / _col(op_r) ** 2))
    img = img + strength * _col(labels == 1) * patch * (0.5 + 0.5 * lungs)

    img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    return img
