"""Labelled records -> pixels and masks, through the scan's own decoder.

Records may be :class:`~vip2scan.model.data.readers.Sample` objects, dicts (Ray rows, JSON) or
anything with the same attributes. Train, eval and calibration read their images here, with
:func:`vip2scan.model.images.load_image`, so their numbers are measured on the pixels a scan
scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..images import load_image, load_mask


def record_get(record: Any, key: str, default: Any = None) -> Any:
    """Records may be dicts or objects with attributes (dataset readers, Ray rows)."""
    if isinstance(record, dict):
        return record.get(key, default)
    return getattr(record, key, default)


def has_pixel_truth(record: Any) -> bool:
    """Normal images have an all-zero mask by definition; anomalous ones need a mask file."""
    return int(record_get(record, "label", 0)) == 0 or bool(record_get(record, "mask_uri"))


def load_sample(record: Any, size: int, storage_options: dict | None = None
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """(image uint8 [S,S,3], mask bool [S,S], label) of one record."""
    image = load_image(record_get(record, "image_uri"), size, storage_options)
    mask = load_mask(record_get(record, "mask_uri"), size, storage_options)
    return image, mask, int(record_get(record, "label", 0))


def prefetched(fn: Callable[[Any], Any], items: Iterable[Any], threads: int = 4,
               window: int = 16) -> Iterator[Any]:
    """``map(fn, items)`` in order, computed by ``threads`` threads at most ``window`` ahead
    (decoding releases the GIL; the window bounds memory on big datasets)."""
    items = iter(items)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        pending = [pool.submit(fn, x) for _, x in zip(range(window), items)]
        while pending:
            result = pending.pop(0).result()
            nxt = next(items, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield result
