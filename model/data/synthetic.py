"""Procedural products with pasted defects and exact masks (numpy + PIL, no torch).

Every image is a pure function of (category, defect, size, seed):
  - the defect-free base image depends on (category, seed) only, so
    ``make_sample(c, d, s, k)`` differs from ``make_sample(c, None, s, k)`` exactly on
    the pixels of the returned mask;
  - every pixel inside a defect mask differs from the base by at least
    ``MIN_DELTA`` grey levels in some channel, so defects are visible and the mask is
    exactly the set of changed pixels.

Writers go through fsspec, so ``root`` may be a local path, ``file://`` or ``s3://``.
"""

from __future__ import annotations

import io
import math
import zlib
from functools import lru_cache

import fsspec
import numpy as np
from PIL import Image, ImageDraw

TEXTURES = ("carpet_like", "grid_like", "wood_like", "leather_like")
OBJECTS = ("disc", "tile", "bottle_top", "hexnut")
CATEGORIES = TEXTURES + OBJECTS
DEFECT_TYPES = ("scratch", "blob", "cutpaste", "colour")
MIN_DELTA = 40  # grey levels: smallest change a defect makes to any of its pixels


def _stable_id(name: str) -> int:
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


def make_base(category: str, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Defect-free image uint8 [size,size,3] and its foreground bool [size,size]."""
    if category not in _MAKERS:
        raise ValueError(f"unknown category {category!r}; choose from {CATEGORIES}")
    rng = np.random.default_rng([seed, _stable_id(category)])
    out = _MAKERS[category](rng, size)
    img, fg = out if isinstance(out, tuple) else (out, np.ones((size, size), bool))
    y, x = _grid(size)
    a = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0, 0.15) * (math.cos(a) * x + math.sin(a) * y)  # uneven lighting
    img = img.astype(np.float32, copy=False) * light[..., None]
    img += 2.0 * rng.standard_normal(img.shape, dtype=np.float32)  # sensor noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), fg


# ---------------------------------------------------------------- defects
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
        width = max(1, int(round(rng.uniform(2.0, 5.0) * size / 256)))
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


_DEFECTS = {"scratch": _scratch, "blob": _blob, "cutpaste": _cutpaste, "colour": _colour}


def add_defect(image: np.ndarray, fg: np.ndarray, defect: str, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Paste one defect: image uint8 [H,W,3], fg bool [H,W] -> (image, mask uint8 {0,255})."""
    if defect not in _DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; choose from {DEFECT_TYPES}")
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


def make_sample(category: str, defect: str | None = None, size: int = 256, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """One image uint8 [size,size,3] and its mask uint8 [size,size] in {0,255}.

    defect=None gives a normal image (all-zero mask); the same (category, size, seed)
    gives the same base image whatever the defect.
    """
    image, fg = make_base(category, size, seed)
    if defect is None or defect == "good":
        return image, np.zeros((size, size), np.uint8)
    rng = np.random.default_rng([seed, _stable_id(category), _stable_id(defect)])
    return add_defect(image, fg, defect, rng)


# ---------------------------------------------------------------- writers
def encode_png(array: np.ndarray, fmt: str = "png") -> bytes:
    """uint8 [H,W,3] or [H,W] -> encoded bytes (png, or jpg at quality 95)."""
    buf = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        Image.fromarray(array).save(buf, format="JPEG", quality=95)
    else:
        Image.fromarray(array).save(buf, format="PNG", compress_level=1)  # speed over size
    return buf.getvalue()


def _sub_seed(seed: int, *parts) -> int:
    key = [seed] + [p if isinstance(p, int) else _stable_id(p) for p in parts]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


class _Writer:
    """Buffers files and writes them with fs.pipe in chunks (concurrent on object stores)."""

    def __init__(self, root: str, storage_options: dict | None, chunk: int = 128):
        self.fs, self.base = fsspec.core.url_to_fs(root, **(storage_options or {}))
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else self.fs.protocol
        self.local = "file" in protocols
        self.pending: dict[str, bytes] = {}
        self.chunk = chunk
        self.made: set[str] = set()

    def put(self, rel: str, data: bytes) -> None:
        path = f"{self.base.rstrip('/')}/{rel}"
        if self.local:  # object stores have no directories to make
            parent = path.rsplit("/", 1)[0]
            if parent not in self.made:
                self.fs.makedirs(parent, exist_ok=True)
                self.made.add(parent)
        self.pending[path] = data
        if len(self.pending) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.fs.pipe(self.pending)
            self.pending = {}


def write_mvtec_tree(root: str, categories=CATEGORIES, n_good: int = 10, n_defect: int = 3,
                     size: int = 256, seed: int = 0, storage_options: dict | None = None,
                     n_train: int | None = None, defects=DEFECT_TYPES) -> str:
    """Write an MVTec-AD-style tree and return ``root``.

    <cat>/train/good/NNN.png (n_train, default n_good), <cat>/test/good/NNN.png (n_good),
    <cat>/test/<defect>/NNN.png (n_defect per defect type),
    <cat>/ground_truth/<defect>/NNN_mask.png (single channel, {0,255}).
    """
    out = _Writer(root, storage_options)
    n_train = n_good if n_train is None else n_train
    for cat in categories:
        for i in range(n_train):
            img, _ = make_sample(cat, None, size, _sub_seed(seed, "train", i))
            out.put(f"{cat}/train/good/{i:03d}.png", encode_png(img))
        for i in range(n_good):
            img, _ = make_sample(cat, None, size, _sub_seed(seed, "test/good", i))
            out.put(f"{cat}/test/good/{i:03d}.png", encode_png(img))
        for defect in defects:
            for i in range(n_defect):
                img, mask = make_sample(cat, defect, size, _sub_seed(seed, f"test/{defect}", i))
                out.put(f"{cat}/test/{defect}/{i:03d}.png", encode_png(img))
                out.put(f"{cat}/ground_truth/{defect}/{i:03d}_mask.png", encode_png(mask))
    out.flush()
    return root


def write_lake(root: str, n_images: int, defect_fraction: float = 0.2, size: int = 224,
               seed: int = 0, nested: bool = True, storage_options: dict | None = None,
               fmt: str = "png", categories=CATEGORIES, n_days: int = 7) -> list[dict]:
    """Write an unlabelled "lake" of images and return its ground truth.

    nested=True: root/line{k}/day{dd}/img_{i:05d}.<fmt>, production line k making
    categories[k]; nested=False: root/img_{i:05d}.<fmt>. Returns one dict per image:
    image_uri (root joined with the relative path), label (0/1), category, defect (or None).
    """
    if fmt not in ("png", "jpg", "jpeg"):
        raise ValueError(f"fmt must be png or jpg, not {fmt!r}")
    rng = np.random.default_rng([seed, _stable_id("lake")])
    is_defect = rng.random(n_images) < defect_fraction
    defect_ids = rng.integers(0, len(DEFECT_TYPES), n_images)
    out = _Writer(root, storage_options)
    records = []
    for i in range(n_images):
        k = i % len(categories)
        cat = categories[k]
        defect = DEFECT_TYPES[defect_ids[i]] if is_defect[i] else None
        img, _ = make_sample(cat, defect, size, _sub_seed(seed, "lake", i))
        day = (i // len(categories)) % n_days + 1
        rel = f"line{k}/day{day:02d}/img_{i:05d}.{fmt}" if nested else f"img_{i:05d}.{fmt}"
        out.put(rel, encode_png(img, fmt))
        records.append({"image_uri": f"{root.rstrip('/')}/{rel}", "label": int(defect is not None),
                        "category": cat, "defect": defect})
    out.flush()
    return records
