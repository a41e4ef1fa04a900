"""Procedural products: textures and objects on a table, defect-free (numpy + PIL).

``make_base(category, size, seed)`` is a pure function of its arguments. The classic set
(``TEXTURES``, ``OBJECTS``) is what the lakes of the tests and the demo are made of; generator
version 2 added ``EXTRA_TEXTURES`` and ``EXTRA_OBJECTS`` for the embedded model's pretraining
and its held-out evaluation (see :mod:`vip2scan.model.data.splits`).
"""

from __future__ import annotations

import math
import zlib
from functools import lru_cache

import numpy as np
from PIL import Image

TEXTURES = ("carpet_like", "grid_like", "wood_like", "leather_like")
OBJECTS = ("disc", "tile", "bottle_top", "hexnut")
CATEGORIES = TEXTURES + OBJECTS
EXTRA_TEXTURES = ("fabric_like", "marble_like")
EXTRA_OBJECTS = ("pill",)
ALL_CATEGORIES = CATEGORIES + EXTRA_TEXTURES + EXTRA_OBJECTS


def stable_id(name: str) -> int:
    # crc32, not hash(): Python's str hash is salted per process.
    return zlib.crc32(name.encode())


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) pixel-centre coordinates in [-1, 1], float32 [size, size] each (read-only)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(c, c, indexing="ij")
    y.flags.writeable = False
    x.flags.writeable = False
    return y, x


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in about [0, 1], float32 [size, size] (bicubic upsampling)."""
    cells = max(2, min(cells, size))
    low = Image.fromarray(rng.random((cells, cells), dtype=np.float32), mode="F")
    return np.asarray(low.resize((size, size), Image.BICUBIC))


def _rotate(y, x, angle):
    c, s = math.cos(angle), math.sin(angle)
    return c * y - s * x, s * y + c * x


def _tint(gray: np.ndarray, colour) -> np.ndarray:
    """[H,W] shading times an RGB colour -> float32 [H,W,3]."""
    return gray.astype(np.float32, copy=False)[..., None] * np.asarray(colour, dtype=np.float32)



# ---------------------------------------------------------------- textures
def _carpet(rng, size):
    colour = rng.choice([[150, 60, 50], [70, 90, 140], [120, 120, 110], [90, 120, 70]])
    shade = 0.55 + 0.3 * _noise(rng, size, size // 2) + 0.25 * _noise(rng, size, size // 16)
    return _tint(shade, colour + rng.integers(-20, 20, 3))


def _grid_mesh(rng, size):
    y, x = _grid(size)
    y, x = _rotate(y, x, rng.uniform(-0.2, 0.2))
    # cos**8 peaks at both cos = 1 and -1: wires every period / 2 = 10-17 px at 224
    period = rng.uniform(0.18, 0.3)
    phase = rng.uniform(0, 1, 2)
    wire_x = np.cos(2 * np.pi * (x / period + float(phase[0]))) ** 8
    wire_y = np.cos(2 * np.pi * (y / period + float(phase[1]))) ** 8
    shade = 0.15 + 0.75 * np.maximum(wire_x, wire_y) + 0.1 * _noise(rng, size, size // 4)
    return _tint(shade, [200, 200, 205] + rng.integers(-30, 30, 3))


def _wood(rng, size):
    y, x = _grid(size)
    y, x = _rotate(y, x, rng.uniform(-0.3, 0.3))
    warp = 0.25 * _noise(rng, size, 6) + 0.05 * _noise(rng, size, 24)
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (x + warp) / rng.uniform(0.12, 0.22))
    light = np.array([200, 150, 100], np.float32) + rng.integers(-20, 20, 3)
    dark = light * rng.uniform(0.55, 0.7)
    return dark + rings[..., None] ** 2 * (light - dark)


def _leather(rng, size):
    ridges = 1 - np.abs(2 * _noise(rng, size, size // 10) - 1)  # ridged noise: creases
    shade = 0.45 + 0.35 * ridges**3 + 0.2 * _noise(rng, size, size // 2)
    colour = rng.choice([[110, 70, 40], [60, 50, 45], [170, 130, 90]])
    return _tint(shade, colour + rng.integers(-15, 15, 3))


# ---------------------------------------------------------------- objects
def _background(rng, size):
    base = rng.uniform(25, 70)
    return _tint(base / 255 + 0.05 * _noise(rng, size, 8), [255, 255, 255])


def _metal(rng, size, y, x):
    """Brushed-metal shading lit from a random direction, float32 [size, size]."""
    a = rng.uniform(0, 2 * np.pi)
    return 0.6 + 0.25 * (math.cos(a) * x + math.sin(a) * y) + 0.1 * _noise(rng, size, size // 3)


def _disc(rng, size):
    y, x = _grid(size)
    cy, cx = (float(v) for v in rng.uniform(-0.1, 0.1, 2))
    r = np.hypot(y - cy, x - cx)
    radius = rng.uniform(0.6, 0.78)
    fg = r < radius
    shade = _metal(rng, size, y, x) * np.where(r > radius - 0.06, 0.7, 1.0)
    img = _background(rng, size)
    img[fg] = _tint(shade, [190, 185, 175] + rng.integers(-25, 25, 3))[fg]
    return img, fg


def _tile(rng, size):
    y, x = _grid(size)
    v, u = _rotate(y - rng.uniform(-0.1, 0.1), x - rng.uniform(-0.1, 0.1), rng.uniform(-0.3, 0.3))
    half = rng.uniform(0.5, 0.65)
    edge = np.maximum(np.abs(u), np.abs(v))
    fg = edge < half
    speckle = (rng.random((size, size)) < 0.02) * -0.25  # glaze speckles
    shade = 0.85 + speckle + 0.08 * _noise(rng, size, 10) - 0.2 * (edge > half - 0.05)
    colour = rng.choice([[220, 215, 200], [180, 90, 60], [90, 130, 160], [200, 200, 200]])
    img = _background(rng, size)
    img[fg] = _tint(shade, colour)[fg]
    return img, fg


def _bottle_top(rng, size):
    y, x = _grid(size)
    r = np.hypot(y - rng.uniform(-0.08, 0.08), x - rng.uniform(-0.08, 0.08))
    radius = rng.uniform(0.65, 0.8)
    fg = r < radius
    rings = 0.6 + 0.3 * np.cos(r * rng.uniform(25, 40)) ** 2 - 0.35 * (r > radius * 0.85)
    shade = rings + 0.08 * _noise(rng, size, size // 6)
    img = _background(rng, size)
    colour = rng.choice([[60, 140, 70], [40, 90, 50], [150, 110, 40]])
    img[fg] = _tint(shade, colour + rng.integers(-20, 20, 3))[fg]
    return img, fg


def _hexnut(rng, size):
    y, x = _grid(size)
    y, x = y - rng.uniform(-0.1, 0.1), x - rng.uniform(-0.1, 0.1)
    a0 = rng.uniform(0, np.pi / 3)
    # a regular hexagon is the intersection of three slabs |n_k . p| < apothem
    hexa = np.max([np.abs(math.cos(a0 + k * np.pi / 3) * x + math.sin(a0 + k * np.pi / 3) * y)
                   for k in range(3)], axis=0)
    apothem = rng.uniform(0.55, 0.7)
    hole = np.hypot(y, x) < apothem * rng.uniform(0.4, 0.55)
    fg = (hexa < apothem) & ~hole
    shade = _metal(rng, size, y, x) - 0.25 * (hexa > apothem - 0.07)
    img = _background(rng, size)
    img[fg] = _tint(shade, [170, 170, 175] + rng.integers(-20, 20, 3))[fg]
    return img, fg


_MAKERS = {"carpet_like": _carpet, "grid_like": _grid_mesh, "wood_like": _wood,
           "leather_like": _leather, "disc": _disc, "tile": _tile,
           "bottle_top": _bottle_top, "hexnut": _hexnut}


# ---------------------------------------------------------------- generator version 2
def _fabric(rng, size):
    y, x = _grid(size)
    y, x = _rotate(y, x, rng.uniform(-0.25, 0.25))
    period = rng.uniform(0.07, 0.12)  # one thread: 4-7 px at 112
    fy, fx = y / period, x / period
    # plain weave: warp on top where the cell parity is even, weft where it is odd
    over = (np.floor(fy) + np.floor(fx)) % 2 == 0
    across = np.where(over, np.cos(np.pi * (fx % 1 - 0.5)), np.cos(np.pi * (fy % 1 - 0.5)))
    shade = 0.45 + 0.45 * across**2 + 0.1 * _noise(rng, size, size // 3)
    colour = rng.choice([[200, 190, 160], [60, 70, 120], [150, 40, 60], [80, 110, 90]])
    return _tint(shade, colour + rng.integers(-20, 20, 3))


def _marble(rng, size):
    y, x = _grid(size)
    y, x = _rotate(y, x, rng.uniform(0, np.pi))
    turbulence = 3.0 * _noise(rng, size, 5) + 1.0 * _noise(rng, size, 14)
    veins = np.abs(np.sin(rng.uniform(3, 6) * (x + 0.4 * y) + turbulence))
    shade = 0.95 - 0.45 * np.exp(-veins * rng.uniform(6, 12)) - 0.08 * _noise(rng, size, size // 4)
    colour = rng.choice([[235, 232, 225], [215, 210, 200], [200, 205, 210]])
    return _tint(shade, colour + rng.integers(-10, 10, 3))


def _pill(rng, size):
    y, x = _grid(size)
    v, u = _rotate(y - rng.uniform(-0.1, 0.1), x - rng.uniform(-0.1, 0.1), rng.uniform(0, np.pi))
    half_len, radius = rng.uniform(0.3, 0.45), rng.uniform(0.25, 0.35)
    along = np.clip(u, -half_len, half_len)
    dist = np.hypot(u - along, v)  # distance to the capsule's axis segment
    fg = dist < radius
    shade = 0.75 + 0.25 * np.sqrt(np.clip(1 - (dist / radius) ** 2, 0, 1)) - 0.1 * _noise(rng, size, 6)
    palette = np.asarray([[230, 225, 215], [200, 60, 50], [240, 200, 60], [70, 120, 200]], np.float32)
    left, right = palette[rng.choice(len(palette), 2, replace=False)]
    img = _background(rng, size)
    colour = np.where((u < 0)[..., None], left, right)
    img[fg] = (shade[..., None] * colour)[fg]
    return img, fg


_MAKERS.update({"fabric_like": _fabric, "marble_like": _marble, "pill": _pill})


def make_base(category: str, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Defect-free image uint8 [size,size,3] and its foreground bool [size,size]."""
    if category not in _MAKERS:
        raise ValueError(f"unknown category {category!r}; choose from {ALL_CATEGORIES}")
    rng = np.random.default_rng([seed, stable_id(category)])
    out = _MAKERS[category](rng, size)
    img, fg = out if isinstance(out, tuple) else (out, np.ones((size, size), bool))
    y, x = _grid(size)
    a = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0, 0.15) * (math.cos(a) * x + math.sin(a) * y)  # uneven lighting
    img = img.astype(np.float32, copy=False) * light[..., None]
    img += 2.0 * rng.standard_normal(img.shape, dtype=np.float32)  # sensor noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), fg


