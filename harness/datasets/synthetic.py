"""Deterministic synthetic image datasets (numpy only): the offline stand-ins for real data.

Two generators, named with their version so that a change of rendering is a new name:

- ``shapes-v2``: a textured shape (disc, square, ... × solid, stripes, ...) on a cluttered,
  noisy background. The class is the (shape, texture) pair, written ``"shape-texture"``;
  position, scale, rotation, texture frequency and phase, colours, background shading and
  clutter are nuisances drawn per image, so that class identity lives in form, not in colour
  or place — which is what makes a backbone pretrained on one set of pairs useful on another.
  ``params``: ``{"classes": ["disc-stripes", ...]}`` plus optional ``noise`` and ``clutter``.
- ``xray-v2``: grayscale, smooth radial "chest-like" fields (two dark lobes, faint arcs, film
  grain); class ``opacity`` adds a diffuse bright patch inside a lobe. A domain unlike the shapes.
  ``params``: ``{"classes": ["normal", "opacity"]}`` plus optional ``noise`` and ``opacity``.

**Bit-identical on every CPU.** The pinned prepared digests must not depend on the machine,
so the images depend only on operations whose result IEEE 754 defines to the last bit:
float64 ``+ - * /`` and ``sqrt`` (correctly rounded), ``floor``, ``abs``, ``min``/``max``,
comparisons, exact integer arithmetic, and the raw 64-bit output of the PCG64 bit generator.
Never a transcendental ufunc (numpy's SIMD kernels for ``exp``/``sin``/… differ in the last
bit between AVX2, AVX-512 and arm64), no BLAS, no floating-point reduction whose order could
change, no ``Generator.normal``/``uniform`` (their C code may be contracted into FMAs where
the compiler targets them): ``sin``, ``cos`` and ``exp`` are float64 polynomials with range
reduction below, built from those exact operations. Every value stays a normal float (the
exponential's argument is clamped), so flush-to-zero modes cannot change a bit either.
``tests/test_synthetic.py`` renders every set under each SIMD level the machine has.

Randomness: every split has its own PCG64 stream seeded by ``SeedSequence([seed, key(split)])``
(one split's size never changes another's images). From it, in this order: one 64-bit key per
image whose stable argsort deals out the balanced labels (counts differ by at most one); a
uniform per image and per nuisance; then, chunk after chunk, the pixel noise. Uniforms are
``(raw >> 11) × 2⁻⁵³`` (exact). Because every per-image draw comes first and the noise is
drawn in pixel order, the chunk size is only a memory/speed knob and never changes an image.
Pixel noise is an Irwin–Hall sum of the four 16-bit words of one raw draw (exact integers),
scaled to the ``noise`` standard deviation.

Quantization to uint8: ``floor(clip(x, 0, 1) × 255 + 0.5)``; grayscale repeats to RGB.
"""

from __future__ import annotations

import hashlib
import math
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
SHAPES_GENERATOR = "shapes-v2"
XRAY_GENERATOR = "xray-v2"
GENERATORS: tuple[str, ...] = (SHAPES_GENERATOR, XRAY_GENERATOR)

# Pixel values per chunk: bounds the float64 work arrays (~0.5 MiB each, cache-sized).
# Changing it changes no image (see the module doc).
_CHUNK_VALUES = 1 << 16


class SyntheticSourceLike(Protocol):
    """What :func:`generate` needs from the manifest's ``SyntheticSource``."""

    generator: str
    seed: int
    params: Mapping[str, Any]


# --------------------------------------------------------------------------- public API


def class_names(source: SyntheticSourceLike) -> tuple[str, ...]:
    """The class names of a synthetic source, in label order."""
    if source.generator == SHAPES_GENERATOR:
        return tuple(f"{s}-{t}" for s, t in _shape_classes(source))
    if source.generator == XRAY_GENERATOR:
        names = tuple(source.params.get("classes", XRAY_CLASSES))
        if names != XRAY_CLASSES:
            raise InputError(
                f"synthetic {XRAY_GENERATOR}: params.classes must be {list(XRAY_CLASSES)}, "
                f"got {list(names)}"
            )
        return names
    raise InputError(
        f"synthetic source: unknown generator {source.generator!r} (known: {', '.join(GENERATORS)})"
    )


def generate(
    source: SyntheticSourceLike,
    splits: Mapping[str, int],
    image_size: int,
    *,
    chunk_values: int = _CHUNK_VALUES,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Render every split: ``{split: (uint8 N×S×S×3 images, int32 N labels)}``.

    Deterministic in ``(source.generator, source.seed, source.params, split name, size)``,
    bit for bit on every CPU; ``chunk_values`` (work-array size) changes speed, not images.
    """
    names = class_names(source)  # validates generator and params
    if not isinstance(image_size, int) or image_size < 8:
        raise InputError(
            f"synthetic {source.generator}: image_size must be an integer >= 8, got {image_size!r}"
        )
    renderer = (
        _ShapesRenderer(source) if source.generator == SHAPES_GENERATOR else _XrayRenderer(source)
    )
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, count in splits.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InputError(
                f"synthetic split {split!r}: size must be an integer >= 0, got {count!r}"
            )
        bits = np.random.PCG64(_split_seed(source.seed, split))
        labels = _balanced_labels(bits, count, len(names))
        nuisances = _uniforms(bits, count * renderer.draws).reshape(count, renderer.draws)
        images = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
        per_image = image_size * image_size * renderer.channels
        chunk = max(1, chunk_values // per_image)
        for start in range(0, count, chunk):
            stop = min(count, start + chunk)
            noise = _noise(bits, (stop - start, image_size, image_size, renderer.channels))
            picture = renderer.render(labels[start:stop], nuisances[start:stop], image_size)
            images[start:stop] = _to_uint8(picture + noise * renderer.noise)
        out[split] = (images, labels)
    return out


# --------------------------------------------------------------------------- randomness


def _split_seed(seed: int, split: str) -> np.random.SeedSequence:
    """An independent stream per (seed, split name), stable across Python runs."""
    key = int.from_bytes(hashlib.sha256(split.encode()).digest()[:8], "little")
    return np.random.SeedSequence([int(seed), key])


def _balanced_labels(bits: np.random.PCG64, count: int, classes: int) -> np.ndarray:
    """``arange(count) % classes`` dealt out by the stable argsort of one raw key per image."""
    order = np.argsort(bits.random_raw(count), kind="stable")
    return (np.arange(count, dtype=np.int64) % classes)[order].astype(np.int32)


def _uniforms(bits: np.random.PCG64, n: int) -> np.ndarray:
    """``n`` float64 in [0, 1): the top 53 bits of a raw draw times 2**-53 (both exact)."""
    return (bits.random_raw(n) >> np.uint64(11)).astype(np.float64) * _TWO_POW_M53


def _noise(bits: np.random.PCG64, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance noise: the four 16-bit words of one raw draw per value, summed.

    The words are taken from the 64-bit value by masks and shifts (no byte-order question):
    pairs are summed in 32-bit lanes, then the lanes. The sum is an exact integer, and
    ``(sum - mean) × (1 / sd)`` one exactly rounded product.
    """
    raw = bits.random_raw(math.prod(shape))
    pairs = (raw & _LOW_WORDS) + ((raw >> np.uint64(16)) & _LOW_WORDS)
    total = (pairs & _LOW_LANE) + (pairs >> np.uint64(32))
    noise = total.astype(np.float64)
    noise -= _IRWIN_HALL_MEAN
    noise *= _IRWIN_HALL_INV_SD
    return noise.reshape(shape)


_TWO_POW_M53 = math.ldexp(1.0, -53)
_LOW_WORDS = np.uint64(0x0000_FFFF_0000_FFFF)
_LOW_LANE = np.uint64(0xFFFF_FFFF)
_IRWIN_HALL_MEAN = 2.0 * 65535  # four uniform words 0..65535
_IRWIN_HALL_INV_SD = 1.0 / math.sqrt(4 * (65536 * 65536 - 1) / 12)


def _between(u: np.ndarray, low: float, high: float) -> np.ndarray:
    """Uniforms in [0, 1) mapped to [low, high): one product and one sum, each rounded once."""
    return low + (high - low) * u


# --------------------------------------------------------------------------- exact-op maths
# Polynomials are evaluated by Horner's rule, one numpy operation per step (no FMA): each
# step is exactly rounded, so the value is the same on every CPU. Accuracy only needs to be
# far below one grey level (1/255); determinism is what matters.

_SIN_COEFFS = tuple((-1.0 if k % 2 else 1.0) / math.factorial(2 * k + 1) for k in range(6))
_EXP_COEFFS = tuple(1.0 / math.factorial(k) for k in range(7))  # 1 .. r**6
_LN2 = 0.6931471805599453
_INV_LN2 = 1.4426950408889634
_TWO_PI = 6.283185307179586
_EXP_MAX_ARG = 40.0  # exp(-40) ~ 4e-18: far below a grey level, far above subnormals
_EXPONENT_BIAS = 1023


def _horner(coeffs: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """``sum(c_i x**i)``: a fresh array, updated in place (one rounding per operation)."""
    acc = x * coeffs[-1]
    acc += coeffs[-2]
    for c in coeffs[-3::-1]:
        acc *= x
        acc += c
    return acc


def sin_turns(t: np.ndarray | float) -> np.ndarray:
    """``sin(2π t)`` for ``t`` in turns, from exact operations only (|error| < 1e-7).

    Range reduction: ``r = t - floor(t + 1/2)`` in [-1/2, 1/2], folded into [-1/4, 1/4] by
    the symmetry sin(π - x) = sin(x); then the odd Taylor polynomial to x**11 in x = 2πr.
    """
    t = np.asarray(t, dtype=np.float64)
    r = t - np.floor(t + 0.5)
    r = np.minimum(r, 0.5 - r)
    r = np.maximum(r, -0.5 - r)
    x = r * _TWO_PI
    acc = _horner(_SIN_COEFFS, x * x)
    acc *= x
    return acc


def cos_turns(t: np.ndarray | float) -> np.ndarray:
    """``cos(2π t)`` for ``t`` in turns: ``sin_turns(t + 1/4)``."""
    return sin_turns(np.asarray(t, dtype=np.float64) + 0.25)


def exp_neg(z: np.ndarray) -> np.ndarray:
    """``exp(-z)`` for ``z >= 0`` (sums of squares here), from exact operations only
    (relative error < 2e-7).

    ``z`` is capped at 40; ``z = k ln2 + r`` with integer ``k`` and |r| <= ln2/2; ``exp(-r)``
    by its Taylor polynomial to r**6, then times ``2**-k``, made exactly from its bits.
    """
    z = np.minimum(z, _EXP_MAX_ARG)
    k = z * _INV_LN2
    k += 0.5
    np.floor(k, out=k)
    r = k * _LN2
    r -= z  # = -(z - k ln2): the polynomial is exp of this, in [-ln2/2, ln2/2]
    acc = _horner(_EXP_COEFFS, r)
    scale = ((_EXPONENT_BIAS - k.astype(np.int64)) << 52).view(np.float64)  # 2**-k, exact
    acc *= scale
    return acc


def _frac(t: np.ndarray) -> np.ndarray:
    return t - np.floor(t)


# --------------------------------------------------------------------------- helpers


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Float images (N×S×S×1 gray or N×S×S×3) to uint8 RGB: ``floor(clip(x) × 255 + 0.5)``."""
    q = np.floor(np.minimum(np.maximum(x, 0.0), 1.0) * 255.0 + 0.5).astype(np.uint8)
    if q.shape[-1] == 1:
        q = np.repeat(q, 3, axis=-1)
    return q


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]: rows ``(1, S, 1)`` and columns ``(1, 1, S)``."""
    c = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    return c[None, :, None], c[None, None, :]


def _col(a: np.ndarray) -> np.ndarray:
    """Per-image scalars (N,) broadcastable against (N, S, S)."""
    return np.asarray(a, dtype=np.float64)[:, None, None]


def _shape_classes(source: SyntheticSourceLike) -> list[tuple[str, str]]:
    raw = source.params.get("classes")
    where = f"synthetic {SHAPES_GENERATOR}"
    if not isinstance(raw, list) or len(raw) < 2:
        raise InputError(
            f"{where}: params.classes must be a list of >= 2 'shape-texture' names, got {raw!r}"
        )
    pairs: list[tuple[str, str]] = []
    for name in raw:
        shape, _, texture = str(name).partition("-")
        if shape not in SHAPES or texture not in TEXTURES:
            raise InputError(
                f"{where}: class {name!r} is not 'shape-texture' with shape in "
                f"{list(SHAPES)} and texture in {list(TEXTURES)}"
            )
        pairs.append((shape, texture))
    if len(set(pairs)) != len(pairs):
        raise InputError(f"{where}: params.classes has duplicates: {raw!r}")
    return pairs


def _number(
    source: SyntheticSourceLike, key: str, default: float, low: float, high: float
) -> float:
    value = source.params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InputError(
            f"synthetic {source.generator}: params.{key} must be a number in [{low}, {high}], "
            f"got {value!r}"
        )
    return float(value)


def _count(source: SyntheticSourceLike, key: str, default: int, high: int) -> int:
    value = source.params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise InputError(
            f"synthetic {source.generator}: params.{key} must be an integer in [0, {high}], "
            f"got {value!r}"
        )
    return value


class _Draws:
    """Named columns of the per-image nuisance uniforms, handed out in a fixed order."""

    def __init__(self, u: np.ndarray) -> None:
        self.u, self.i = u, 0

    def take(self, low: float = 0.0, high: float = 1.0) -> np.ndarray:
        col = self.u[:, self.i]
        self.i += 1
        return _between(col, low, high)

    def colour(self) -> np.ndarray:
        return np.stack([self.take() for _ in range(3)], axis=1)

    def check_all_used(self) -> None:
        """Every column is one nuisance: a renderer that skips one would waste the stream."""
        if self.i != self.u.shape[1]:
            raise RuntimeError(f"renderer used {self.i} of {self.u.shape[1]} draws per image")


# --------------------------------------------------------------------------- shapes-v2

# Each mask maps local coordinates (u, v) of unit radius, and r2 = u² + v², to a boolean mask.
Mask = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _star(u: np.ndarray, v: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """r < 0.55 + 0.45 cos 5θ, with cos 5θ = T5(cos θ) and cos θ = u / r (Chebyshev)."""
    r = np.sqrt(r2)
    c = u / np.maximum(r, 1e-9)
    c2 = c * c
    cos5 = c * (5.0 + c2 * (16.0 * c2 - 20.0))
    return r < 0.55 + 0.45 * cos5


_MASKS: dict[str, Mask] = {
    "disc": lambda u, v, r2: r2 < 1.0,
    "square": lambda u, v, r2: np.maximum(np.abs(u), np.abs(v)) < 0.8,
    "triangle": lambda u, v, r2: (v > -0.5) & (v < 1.0 - 1.732 * np.abs(u)),
    "ring": lambda u, v, r2: (r2 < 1.0) & (r2 > 0.36),
    "plus": lambda u, v, r2: (
        ((np.abs(u) < 0.32) | (np.abs(v) < 0.32)) & (np.maximum(np.abs(u), np.abs(v)) < 1.0)
    ),
    "diamond": lambda u, v, r2: np.abs(u) + np.abs(v) < 1.0,
    "star": _star,
    "bars": lambda u, v, r2: (np.abs(u) < 0.9) & (np.abs(np.abs(v) - 0.5) < 0.25),
}

# Each texture maps (u, v, r2, frequency in turns per unit, phase in turns) to a blend
# weight in [0, 1] between the two object colours. Square waves are fractional parts
# (sin(2πt) > 0 exactly when frac(t) < 1/2): no trigonometry at all.
Texture = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _dots(u: np.ndarray, v: np.ndarray, r2: np.ndarray, f: np.ndarray, p: np.ndarray) -> np.ndarray:
    """A lattice of round dots: within 0.236 turns of the nearest lattice point."""
    a, b = u * (0.8 * f) + p, v * (0.8 * f) + p
    da, db = a - np.floor(a + 0.5), b - np.floor(b + 0.5)
    return (da * da + db * db < 0.0557).astype(np.float64)


_TEXTURES: dict[str, Texture] = {
    "solid": lambda u, v, r2, f, p: np.ones_like(u),
    "stripes": lambda u, v, r2, f, p: (_frac(u * f + p) < 0.5).astype(np.float64),
    "checker": lambda u, v, r2, f, p: ((_frac(u * f + p) < 0.5) == (_frac(v * f + p) < 0.5)).astype(
        np.float64
    ),
    "dots": _dots,
    "rings": lambda u, v, r2, f, p: (_frac(np.sqrt(r2) * (1.3 * f) + p) < 0.5).astype(np.float64),
    "gradient": lambda u, v, r2, f, p: np.minimum(np.maximum(0.5 + 0.5 * u, 0.0), 1.0),
}


class _ShapesRenderer:
    """shapes-v2: background shading + clutter + one textured shape + pixel noise."""

    channels = 3

    def __init__(self, source: SyntheticSourceLike) -> None:
        pairs = _shape_classes(source)
        self.shape_of = np.array([SHAPES.index(s) for s, _ in pairs], dtype=np.int64)
        self.texture_of = np.array([TEXTURES.index(t) for _, t in pairs], dtype=np.int64)
        self.noise = _number(source, "noise", 0.04, 0.0, 1.0)
        self.clutter = _count(source, "clutter", 1, 16)
        self.draws = 19 + 8 * self.clutter

    def render(self, labels: np.ndarray, u: np.ndarray, size: int) -> np.ndarray:
        """N×S×S×3 floats (about [0, 1]) for ``labels``; ``u`` holds each image's uniforms."""
        d = _Draws(u)
        n = len(labels)
        yy, xx = _grid(size)
        cx, cy = d.take(-0.25, 0.25), d.take(-0.25, 0.25)
        radius = d.take(0.55, 0.8)
        turn = d.take()  # rotation, in turns
        freq = d.take(0.8, 1.1)  # texture frequency, turns per unit radius
        phase = d.take()
        colour_a, colour_b, bg = d.colour(), d.colour(), d.colour()
        kx, ky, kp, amp = (d.take(-1.0, 1.0) for _ in range(4))
        # Keep the two texture colours apart so the texture stays visible ...
        diff = np.abs(colour_a - colour_b)
        low_contrast = diff[:, 0] + diff[:, 1] + diff[:, 2] < 0.6
        colour_b[low_contrast] = 1.0 - colour_a[low_contrast]
        # ... and the object apart from the background, in brightness.
        mid = (colour_a + colour_b) * 0.5
        lum_bg = 0.3 * bg[:, 0] + 0.59 * bg[:, 1] + 0.11 * bg[:, 2]
        lum_obj = 0.3 * mid[:, 0] + 0.59 * mid[:, 1] + 0.11 * mid[:, 2]
        close = np.abs(lum_bg - lum_obj) < 0.25
        bg[close] = 1.0 - bg[close]

        # Background: a colour plus a low-frequency shading wave, sin(a·x + c + b·y) by
        # the addition theorem on per-row and per-column factors (the planes stay cheap).
        a_x = _col(kx * 0.5) * xx + _col(kp * 0.5)  # turns; 3 rad/unit ≈ 0.48 turns
        b_y = _col(ky * 0.5) * yy
        wave = sin_turns(a_x) * cos_turns(b_y) + cos_turns(a_x) * sin_turns(b_y)
        img = bg[:, None, None, :] + (wave * _col(amp * 0.15))[..., None]

        # Clutter: small solid blobs and thin lines in random colours.
        for _ in range(self.clutter):
            kx, ky = d.take(-1.0, 1.0), d.take(-1.0, 1.0)
            kr = d.take(0.06, 0.16)
            ang = d.take(0.0, 0.5)  # turns
            is_line = d.take() < 0.5
            colour = d.colour()
            dx, dy = xx - _col(kx), yy - _col(ky)
            ca, sa = _col(cos_turns(ang)), _col(sin_turns(ang))
            blob = dx * dx + dy * dy < _col(kr * kr)
            along = dx * ca + dy * sa
            across = dy * ca - dx * sa
            line = (np.abs(across) < 0.045) & (np.abs(along) < _col(kr * 4.0))
            mask = np.where(is_line[:, None, None], line, blob)
            img = np.where(mask[..., None], colour[:, None, None, :], img)

        # The object, in its own rotated, scaled frame.
        inv_r = 1.0 / radius
        cos_r, sin_r = _col(cos_turns(turn) * inv_r), _col(sin_turns(turn) * inv_r)
        dx, dy = xx - _col(cx), yy - _col(cy)
        u_ = dx * cos_r + dy * sin_r
        v_ = dy * cos_r - dx * sin_r
        r2 = u_ * u_ + v_ * v_
        shape_of, texture_of = self.shape_of[labels], self.texture_of[labels]
        mask = np.zeros((n, size, size), dtype=bool)
        blend = np.zeros((n, size, size), dtype=np.float64)
        for i, name in enumerate(SHAPES):
            idx = np.flatnonzero(shape_of == i)
            if idx.size:
                mask[idx] = _MASKS[name](u_[idx], v_[idx], r2[idx])
        for i, name in enumerate(TEXTURES):
            idx = np.flatnonzero(texture_of == i)
            if idx.size:
                blend[idx] = _TEXTURES[name](
                    u_[idx], v_[idx], r2[idx], _col(freq[idx]), _col(phase[idx])
                )
        d.check_all_used()
        blend = blend[..., None]
        fg = colour_b[:, None, None, :] + blend * (colour_a - colour_b)[:, None, None, :]
        return np.where(mask[..., None], fg, img)


# --------------------------------------------------------------------------- xray-v2


class _XrayRenderer:
    """xray-v2: body falloff − two lobes + rib arcs (+ an opacity patch) + film grain."""

    channels = 1
    draws = 12

    def __init__(self, source: SyntheticSourceLike) -> None:
        self.noise = _number(source, "noise", 0.04, 0.0, 1.0)
        self.strength = _number(source, "opacity", 0.35, 0.0, 1.0)

    def render(self, labels: np.ndarray, u: np.ndarray, size: int) -> np.ndarray:
        """N×S×S×1 grayscale floats (about [0, 1]); label 1 carries a diffuse opacity."""
        d = _Draws(u)
        yy, xx = _grid(size)
        brightness = d.take(0.55, 0.8)
        tilt = d.take(-0.15, 0.15)
        shift_x, shift_y = d.take(-0.08, 0.08), d.take(-0.08, 0.08)
        lobe_w, lobe_h = d.take(0.22, 0.3), d.take(0.5, 0.65)
        rib_f = d.take(2.2, 3.2)  # turns per unit
        rib_p = d.take()
        side = np.where(d.take() < 0.5, -1.0, 1.0)
        op_x, op_y = d.take(-1.0, 1.0), d.take(-1.0, 1.0)
        op_r = d.take(0.15, 0.28)

        d.check_all_used()
        x = xx - _col(shift_x) + _col(tilt) * yy  # N×S×S
        y = yy - _col(shift_y)  # N×S×1
        x2 = x * x * (1.0 / (0.95 * 0.95))
        y2 = y * y * (1.0 / (1.1 * 1.1))
        img = _col(brightness) * exp_neg(x2 * x2 + y2 * y2)  # soft radial falloff

        inv_w2, inv_h2 = _col(1.0 / (lobe_w * lobe_w)), _col(1.0 / (lobe_h * lobe_h))
        yh = y * y * inv_h2
        lungs = 0.0
        for sign in (-0.42, 0.42):
            dx = x - sign
            dist = dx * dx * inv_w2 + yh
            lungs = lungs + exp_neg(dist * dist)
        img = img - 0.38 * lungs
        yr = y + 1.2
        arcs = sin_turns(np.sqrt(x * x + yr * yr) * _col(rib_f) + _col(rib_p))
        img = img + 0.05 * lungs * arcs

        # The opacity: a diffuse gaussian patch inside one lobe (positive class only).
        sick = np.flatnonzero(labels == 1)
        if sick.size:
            ox = _col(side[sick] * 0.42 + op_x[sick] * lobe_w[sick] * 0.6)
            oy = _col(op_y[sick] * lobe_h[sick] * 0.6)
            dx, dy = x[sick] - ox, y[sick] - oy
            patch = exp_neg((dx * dx + dy * dy) * _col(1.0 / (op_r[sick] * op_r[sick])))
            img[sick] = img[sick] + self.strength * patch * (0.5 + 0.5 * lungs[sick])
        return img[..., None]
