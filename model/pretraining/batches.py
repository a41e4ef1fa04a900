"""Pretraining batches drawn from the generator: an endless, seeded stream.

Batch ``step`` is a pure function of (seed, step), so a rebuild sees the same data in the
same order whatever the machine, and a run can be checked against another step by step.
Variety comes from the generator (colour, lighting, position per seed) plus scale
(a random crop of a larger render), the eight rotations/flips and a brightness/contrast
jitter. Channels are never permuted: product colours are part of what "normal" means.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.synthetic import make_sample
from .captions import caption


@dataclass(frozen=True)
class PretrainBatch:
    images: torch.Tensor  # uint8 [B, 3, S, S]
    masks: torch.Tensor  # float32 [B, S, S], 1 on defect pixels
    captions: list[str]


def draw_sample(rng: np.random.Generator, categories: Sequence[str], defects: Sequence[str],
                size: int, defect_rate: float) -> tuple[np.ndarray, np.ndarray, str]:
    """One augmented sample: image uint8 [S,S,3], mask float32 [S,S], caption."""
    category = str(rng.choice(categories))
    defect = str(rng.choice(defects)) if rng.random() < defect_rate else None
    render = int(size * rng.uniform(1.0, 1.5))
    image, mask = make_sample(category, defect, render, int(rng.integers(2**31)))
    y0, x0 = rng.integers(0, render - size + 1, 2)
    image, mask = image[y0:y0 + size, x0:x0 + size], mask[y0:y0 + size, x0:x0 + size]
    k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
    image, mask = np.rot90(image, k), np.rot90(mask, k)
    if flip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    gain, offset = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
    mean = image.mean()
    image = np.clip((image.astype(np.float32) - mean) * rng.uniform(0.8, 1.2) + mean * gain + offset, 0, 255)
    mask = (mask > 127).astype(np.float32)
    if defect is not None and mask.sum() == 0:
        defect = None  # the crop cut the defect away: the caption must say so
    return np.ascontiguousarray(image.astype(np.uint8)), np.ascontiguousarray(mask), caption(category, defect)


def make_batch(seed: int, step: int, batch_size: int, size: int, categories: Sequence[str],
               defects: Sequence[str], defect_rate: float = 0.5) -> PretrainBatch:
    rng = np.random.default_rng([seed, step])
    samples = [draw_sample(rng, categories, defects, size, defect_rate) for _ in range(batch_size)]
    images = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.stack([s[1] for s in samples]))
    return PretrainBatch(images, masks, [s[2] for s in samples])


def batch_stream(seed: int, steps: range, batch_size: int, size: int, categories: Sequence[str],
                 defects: Sequence[str], defect_rate: float = 0.5) -> Iterator[PretrainBatch]:
    """Batches for ``steps``, the next one drawn in a background thread while a step trains."""
    with cf.ThreadPoolExecutor(1) as pool:
        def submit(step: int) -> cf.Future:
            return pool.submit(make_batch, seed, step, batch_size, size, categories, defects, defect_rate)

        it = iter(steps)
        pending = next((submit(s) for s in it), None)
        while pending is not None:
            nxt = next((submit(s) for s in it), None)
            yield pending.result()
            pending = nxt
