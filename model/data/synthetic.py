"""Procedural products with pasted defects and exact masks (numpy + PIL, no torch).

Every image is a pure function of (category, defect, size, seed):
  - the defect-free base image depends on (category, seed) only, so
    ``make_sample(c, d, s, k)`` differs from ``make_sample(c, None, s, k)`` exactly on
    the pixels of the returned mask;
  - every pixel inside a defect mask differs from the base by at least
    ``MIN_DELTA`` grey levels in some channel, so defects are visible and the mask is
    exactly the set of changed pixels.

The products live in :mod:`.products`, the defects in :mod:`.defects`; this module makes
samples and writes them. Writers go through fsspec, so ``root`` may be a local path,
``file://`` or ``s3://``.
"""

from __future__ import annotations

import io

import fsspec
import numpy as np
from PIL import Image

from .defects import ALL_DEFECTS, DEFECT_TYPES, EXTRA_DEFECTS, MIN_DELTA, add_defect
from .products import (ALL_CATEGORIES, CATEGORIES, EXTRA_OBJECTS, EXTRA_TEXTURES, OBJECTS, TEXTURES,
                       stable_id, make_base)

# Bumped when a product or defect changes what a (category, defect, size, seed) draws:
# the embedded checkpoint's provenance records the version it was trained on.
GENERATOR_VERSION = 2

__all__ = ["ALL_CATEGORIES", "ALL_DEFECTS", "CATEGORIES", "DEFECT_TYPES", "EXTRA_DEFECTS",
           "EXTRA_OBJECTS", "EXTRA_TEXTURES", "GENERATOR_VERSION", "MIN_DELTA", "OBJECTS", "TEXTURES",
           "add_defect", "encode_png", "make_base", "make_sample", "write_lake", "write_mvtec_tree"]


def make_sample(category: str, defect: str | None = None, size: int = 256, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """One image uint8 [size,size,3] and its mask uint8 [size,size] in {0,255}.

    defect=None gives a normal image (all-zero mask); the same (category, size, seed)
    gives the same base image whatever the defect.
    """
    image, fg = make_base(category, size, seed)
    if defect is None or defect == "good":
        return image, np.zeros((size, size), np.uint8)
    rng = np.random.default_rng([seed, stable_id(category), stable_id(defect)])
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


def sub_seed(seed: int, *parts) -> int:
    key = [seed] + [p if isinstance(p, int) else stable_id(p) for p in parts]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


class FileWriter:
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
    out = FileWriter(root, storage_options)
    n_train = n_good if n_train is None else n_train
    for cat in categories:
        for i in range(n_train):
            img, _ = make_sample(cat, None, size, sub_seed(seed, "train", i))
            out.put(f"{cat}/train/good/{i:03d}.png", encode_png(img))
        for i in range(n_good):
            img, _ = make_sample(cat, None, size, sub_seed(seed, "test/good", i))
            out.put(f"{cat}/test/good/{i:03d}.png", encode_png(img))
        for defect in defects:
            for i in range(n_defect):
                img, mask = make_sample(cat, defect, size, sub_seed(seed, f"test/{defect}", i))
                out.put(f"{cat}/test/{defect}/{i:03d}.png", encode_png(img))
                out.put(f"{cat}/ground_truth/{defect}/{i:03d}_mask.png", encode_png(mask))
    out.flush()
    return root


def write_lake(root: str, n_images: int, defect_fraction: float = 0.2, size: int = 224,
               seed: int = 0, nested: bool = True, storage_options: dict | None = None,
               fmt: str = "png", categories=CATEGORIES, n_days: int = 7, defects=DEFECT_TYPES,
               mask_root: str | None = None) -> list[dict]:
    """Write an unlabelled "lake" of images and return its ground truth.

    nested=True: root/line{k}/day{dd}/img_{i:05d}.<fmt>, production line k making
    categories[k]; nested=False: root/img_{i:05d}.<fmt>. Returns one dict per image:
    image_uri (root joined with the relative path), label (0/1), category, defect (or None),
    and with ``mask_root`` also mask_uri: the defect's mask (PNG, {0, 255}) at the same relative
    path under ``mask_root`` (None for normal images), kept out of the lake itself.
    """
    if fmt not in ("png", "jpg", "jpeg"):
        raise ValueError(f"fmt must be png or jpg, not {fmt!r}")
    rng = np.random.default_rng([seed, stable_id("lake")])
    is_defect = rng.random(n_images) < defect_fraction
    defect_ids = rng.integers(0, len(defects), n_images)
    out = FileWriter(root, storage_options)
    masks = FileWriter(mask_root, storage_options) if mask_root else None
    records = []
    for i in range(n_images):
        k = i % len(categories)
        cat = categories[k]
        defect = defects[defect_ids[i]] if is_defect[i] else None
        img, mask = make_sample(cat, defect, size, sub_seed(seed, "lake", i))
        day = (i // len(categories)) % n_days + 1
        rel = f"line{k}/day{day:02d}/img_{i:05d}.{fmt}" if nested else f"img_{i:05d}.{fmt}"
        out.put(rel, encode_png(img, fmt))
        record = {"image_uri": f"{root.rstrip('/')}/{rel}", "label": int(defect is not None),
                  "category": cat, "defect": defect}
        if masks is not None:
            mask_rel = rel.rsplit(".", 1)[0] + ".png"
            if defect is not None:
                masks.put(mask_rel, encode_png(mask))
            record["mask_uri"] = f"{mask_root.rstrip('/')}/{mask_rel}" if defect is not None else None
        records.append(record)
    out.flush()
    if masks is not None:
        masks.flush()
    return records
