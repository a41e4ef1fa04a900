"""Defects pasted onto a product image, with their exact masks (numpy + PIL).

Every pixel inside a returned mask differs from the base image by at least ``MIN_DELTA``
grey levels in some channel, so a defect is visible and its mask is exactly the set of
changed pixels. ``DEFECT_TYPES`` is the classic set; generator version 2 added
``EXTRA_DEFECTS`` (held out from the embedded model's training, see
:mod:`vip2scan.model.data.splits`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

DEFECT_TYPES = ("scratch", "blob", "cutpaste", "colour")
EXTRA_DEFECTS = ("crack", "spots")
ALL_DEFECTS = DEFECT_TYPES + EXTRA_DEFECTS
MIN_DELTA = 40  # grey levels: smallest change a defect makes to any of its pixels


def _blob_region(rng, size, cy, cx, radius):
    """Irregular star-convex blob around (cy, cx) in pixels -> bool [size, size]."""
    reach = int(radius * 1.75) + 2  # the wobble below stretches the radius by < 75 %
    y0, x0 = max(0, int(cy) - reach), max(0, int(cx) - reach)
    yy, xx = np.ogrid[y0:min(size, int(cy) + reach + 1), x0:min(size, int(cx) + reach + 1)]
    dy, dx = (yy - cy).astype(np.float32), (xx - cx).astype(np.float32)
    theta = np.arctan2(dy, dx)
    wobble = sum(rng.uniform(0.05, 0.25) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
                 for k in (2, 3, 5))
    region = np.zeros((size, size), bool)
    region[y0:y0 + dy.shape[0], x0:x0 + dx.shape[1]] = np.hypot(dy, dx) < radius * (1 + wobble)
    return region


def _scratch(rng, img, cy, cx, size):
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(1, 3)):
        length = rng.uniform(0.15, 0.45) * size
        a = rng.uniform(0, np.pi)
        d = np.array([np.cos(a), np.sin(a)]) * length / 2
        p0, p2 = np.array([cx, cy]) - d, np.array([cx, cy]) + d
        p1 = (p0 + p2) / 2 + rng.normal(0, length / 5, 2)  # bend: quadratic Bezier control
        t = np.linspace(0, 1, 24)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t**2 * p2
        width = max(1, round(rng.uniform(2.0, 5.0) * size / 256))
        draw.line([tuple(p) for p in pts], fill=255, width=width, joint="curve")
        cx, cy = cx + rng.normal(0, size * 0.03), cy + rng.normal(0, size * 0.03)
    region = np.asarray(canvas) > 0
    tone = 235.0 if rng.random() < 0.5 else 15.0  # specular or dark groove
    return img * 0.15 + tone * 0.85, region


def _blob(rng, img, cy, cx, size):
    region = _blob_region(rng, size, cy, cx, rng.uniform(0.03, 0.1) * size)
    if rng.random() < 0.5:
        return img * rng.uniform(0.2, 0.5), region  # dark stain / hole
    dirt = np.asarray(rng.choice([[90, 70, 40], [230, 230, 220], [30, 30, 30]]), np.float32)
    return img * 0.3 + dirt * 0.7, region


def _cutpaste(rng, img, cy, cx, size):
    h, w = (rng.uniform(0.08, 0.22, 2) * size).astype(int) + 2
    sy, sx = rng.integers(0, size - h), rng.integers(0, size - w)
    patch = img[sy:sy + h, sx:sx + w]
    patch = np.rot90(patch, rng.integers(1, 4)) if h == w else patch[::-1, ::-1]
    patch = patch * rng.uniform(0.75, 1.3) + rng.uniform(-25, 25, 3)
    ty = int(np.clip(cy - patch.shape[0] // 2, 0, size - patch.shape[0]))
    tx = int(np.clip(cx - patch.shape[1] // 2, 0, size - patch.shape[1]))
    new = img.copy()
    new[ty:ty + patch.shape[0], tx:tx + patch.shape[1]] = patch
    region = np.zeros((size, size), bool)
    region[ty:ty + patch.shape[0], tx:tx + patch.shape[1]] = True
    return new, region


def _colour(rng, img, cy, cx, size):
    region = _blob_region(rng, size, cy, cx, rng.uniform(0.06, 0.16) * size)
    hue = np.asarray(rng.choice([[220, 40, 40], [40, 200, 60], [50, 80, 230], [230, 200, 30]]),
                     np.float32)
    return img * 0.45 + hue * 0.55, region


def _crack(rng, img, cy, cx, size):
    """A thin dark crack: a jagged random walk with one or two side branches."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(rng.uniform(2.0, 4.0) * size / 256))  # as thick as the scratches
    heading = rng.uniform(0, 2 * np.pi)
    starts = [(cx, cy, heading, rng.uniform(0.2, 0.4) * size)]
    branches = 0
    while starts:
        x, y, a, length = starts.pop()
        pts = [(x, y)]
        step = max(2.0, size / 40)
        for _ in range(int(length / step)):
            a += rng.normal(0, 0.45)
            x, y = x + step * np.cos(a), y + step * np.sin(a)
            pts.append((x, y))
            if branches < 2 and rng.random() < 0.08:
                branches += 1
                starts.append((x, y, a + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1), length * 0.4))
        draw.line(pts, fill=255, width=width)
    return img * 0.25, np.asarray(canvas) > 0


def _spots(rng, img, cy, cx, size):
    """A cluster of small dirt spots around (cy, cx)."""
    region = np.zeros((size, size), bool)
    for _ in range(rng.integers(4, 9)):
        oy, ox = rng.normal(0, 0.06 * size, 2)
        region |= _blob_region(rng, size, cy + oy, cx + ox, rng.uniform(0.012, 0.03) * size)
    dirt = np.asarray(rng.choice([[70, 50, 30], [20, 20, 20], [240, 240, 230]]), np.float32)
    return img * 0.2 + dirt * 0.8, region


_DEFECTS = {"scratch": _scratch, "blob": _blob, "cutpaste": _cutpaste, "colour": _colour,
            "crack": _crack, "spots": _spots}


def add_defect(image: np.ndarray, fg: np.ndarray, defect: str, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Paste one defect: image uint8 [H,W,3], fg bool [H,W] -> (image, mask uint8 {0,255})."""
    if defect not in _DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; choose from {ALL_DEFECTS}")
    size = image.shape[0]
    ys, xs = np.nonzero(fg)
    min_area = max(12, size * size // 2000)
    pixels = image.astype(np.float32)
    for _ in range(8):
        i = rng.integers(len(ys))
        new, region = _DEFECTS[defect](rng, pixels, ys[i], xs[i], size)
        region &= fg  # defects sit on the product, not the table it lies on
        if region.sum() >= min_area:
            break
    else:
        new, region = _DEFECTS[defect](rng, pixels, ys[i], xs[i], size)  # give up on fg
        region[ys[i], xs[i]] = True  # never an empty mask for an anomalous image

    old = image.astype(np.int16)
    new = np.clip(np.rint(new), 0, 255).astype(np.int16)
    # Guarantee visibility and mask exactness: every masked pixel moves >= MIN_DELTA.
    weak = region & (np.abs(new - old).max(axis=-1) < MIN_DELTA)
    new[weak] = np.where(old[weak] < 128, old[weak] + MIN_DELTA, old[weak] - MIN_DELTA)
    out = image.copy()
    out[region] = new[region].astype(np.uint8)
    return out, region.astype(np.uint8) * 255
