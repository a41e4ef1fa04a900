"""Large-photo decode: what the reduced-decode rule of model/images.py saves, and what it changes.

Camera frames of a few megapixels (2448 x 2048, a common line-scan / area-camera format) are
generated as JPEGs from a fixed seed; each is decoded to the model size (and to 518 px, the
ViT-L/14 size) twice: by the exact path (full decode, straight bicubic) and by the decoder the
scan uses (DCT-scaled JPEG decode, reducing_gap resize). Reported: CPU ms per image for both,
and the largest change the rule makes to an image score and to an anomaly-map pixel.
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np

PHOTO_SIZE = (2448, 2048)  # width, height: 5 megapixels
LARGE_MODEL_SIZE = 518
DECODE_TARGET_MS = 15.0  # CPU per 5 MP JPEG to 518 px (issue 16)


def make_photos(n: int, seed: int = 0) -> list[bytes]:
    """n 5-megapixel JPEGs (quality 90) of the synthetic textures, some with defects."""
    from PIL import Image

    from vip2scan.model.data.synthetic import CATEGORIES, make_sample

    rng = np.random.default_rng(seed)
    photos = []
    for i in range(n):
        base, _ = make_sample(CATEGORIES[i % len(CATEGORIES)], "scratch" if i % 3 == 0 else None, 512,
                              seed * 1000 + i)
        big = np.asarray(Image.fromarray(base).resize(PHOTO_SIZE, Image.BICUBIC)).astype(np.int16)
        grain = rng.integers(-6, 7, big.shape, dtype=np.int16)  # sensor noise: JPEG is not trivial
        buffer = io.BytesIO()
        Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def exact_decode(data: bytes, size: int) -> np.ndarray:
    """The reference: full-size decode, one bicubic resize."""
    from PIL import Image

    from vip2scan.model.images import open_upright

    return np.asarray(open_upright(data).resize((size, size), Image.BICUBIC)).copy()


def fast_decode(data: bytes, size: int) -> np.ndarray:
    from vip2scan.model.images import decode_image

    return decode_image(data, size)[0]


def cpu_ms_per_image(decode: Any, photos: list[bytes], size: int) -> float:
    decode(photos[0], size)  # warm caches and lazy imports
    start = time.process_time()
    for data in photos:
        decode(data, size)
    return (time.process_time() - start) / len(photos) * 1000


def measure_large_photos(n: int, checkpoint: str, image_size: int, device: str) -> dict[str, Any]:
    """Decode cost and score change on ``n`` generated 5 MP JPEGs (see the module docstring)."""
    import torch

    from vip2scan.model.factory import ModelSpec, load_detector
    from vip2scan.model.images import to_batch

    photos = make_photos(n)
    sizes = sorted({image_size, LARGE_MODEL_SIZE})
    decode_ms = {str(size): {"exact": round(cpu_ms_per_image(exact_decode, photos, size), 2),
                             "fast": round(cpu_ms_per_image(fast_decode, photos, size), 2)}
                 for size in sizes}
    detector = load_detector(ModelSpec(checkpoint), device)
    with torch.no_grad():
        exact_score, exact_map = detector(
            to_batch(np.stack([exact_decode(p, image_size) for p in photos])).to(device))
        fast_score, fast_map = detector(
            to_batch(np.stack([fast_decode(p, image_size) for p in photos])).to(device))
    fast_518 = decode_ms[str(LARGE_MODEL_SIZE)]["fast"]
    return {
        "photos": n, "photo_px": list(PHOTO_SIZE), "model_px": image_size,
        "decode_cpu_ms_per_image": decode_ms,
        "max_abs_delta_image_score": float((exact_score - fast_score).abs().max()),
        "max_abs_delta_map": float((exact_map - fast_map).abs().max()),
        "target_ms_518": DECODE_TARGET_MS, "target_met": fast_518 <= DECODE_TARGET_MS,
    }
