"""Pictures for the run report and the lake explorer: thumbnails and anomaly maps as heat maps.

Thumbnails go through the scan's own decoder (``model/images.py``), so a 16-bit, palette, CMYK
or EXIF-rotated image looks like what was scored.

Display scaling (the rule the pages' legends name): zero-shot scores sit in a narrow band, so
colouring a map by its absolute value in [0, 1] paints every overlay the same colour. Maps are
instead stretched over a *robust range of their run*: the 1st to 99.5th percentile of the pixel
values of that run's maps that are rendered (:func:`display_range`). Colours compare within a
run; the colour bar under each map gives the values its ends stand for.
"""

from __future__ import annotations

import io
from typing import Any, Iterable, Optional

import numpy as np

THUMB_SIDE = 320  # px, longest side of the images shown in the report
DETAIL_SIDE = 384  # px, longest side of the explorer's per-image view
OVERLAY_ALPHA = 0.5
COLORMAP = "turbo"  # perceptually ordered from blue (low) to dark red (high)
LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.5
SCALING_RULE = ("maps are coloured over a robust range per run: the 1st to "
                "99.5th percentile of the pixel values of that run's rendered maps "
                "(blue = low end, dark red = high end); colours compare within a run, the colour "
                "bar gives the values")


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def display_range(maps: Iterable[np.ndarray]) -> tuple[float, float]:
    """(low, high) of the display stretch for maps of one run (see the module docstring).

    A flat run (all pixels alike) still gets a range of non-zero width, so dividing by it is
    safe and the maps show as one colour instead of noise.
    """
    values = [np.asarray(m, dtype=np.float32).ravel() for m in maps]
    values = [v[np.isfinite(v)] for v in values]
    pooled = np.concatenate(values) if values else np.zeros(0, np.float32)
    if pooled.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(pooled, [LOW_PERCENTILE, HIGH_PERCENTILE]))
    if high - low < 1e-6:
        low, high = low - 5e-4, high + 5e-4
    return low, high


PEAK_RULE = ("a map whose maximum lies above its run's range is coloured up to that maximum "
             "(its colour bar ends there), so its hottest spot never saturates")


def raised_to_peak(value_range: tuple[float, float], anomaly_map: np.ndarray) -> tuple[float, float]:
    """The run's display range, its top raised to this map's maximum when that is higher: the
    most anomalous images would otherwise saturate over their whole defect."""
    peak = float(np.nanmax(np.asarray(anomaly_map, dtype=np.float32)))
    return value_range[0], max(value_range[1], peak) if np.isfinite(peak) else value_range[1]


def stretch(anomaly_map: np.ndarray, value_range: Optional[tuple[float, float]]) -> np.ndarray:
    """Map values -> [0, 1] for colouring (None: the absolute [0, 1] scale)."""
    low, high = value_range if value_range is not None else (0.0, 1.0)
    scaled = (np.asarray(anomaly_map, dtype=np.float32) - low) / max(high - low, 1e-12)
    return np.clip(np.nan_to_num(scaled), 0.0, 1.0)


def colour_stops(n: int = 11) -> list[str]:
    """The colormap as ``n`` hex colours, low to high: a page's CSS colour bar uses these, so
    it matches the PNGs exactly."""
    from matplotlib import colormaps

    rgb = (colormaps[COLORMAP](np.linspace(0.0, 1.0, n))[:, :3] * 255).round().astype(int)
    return ["#%02x%02x%02x" % tuple(c) for c in rgb]


def heat_image(anomaly_map: np.ndarray, size: tuple[int, int],
               value_range: Optional[tuple[float, float]]) -> Any:
    """The map resized (bilinear) to ``size`` = (width, height) and coloured: an RGB PIL image."""
    from matplotlib import colormaps
    from PIL import Image

    values = Image.fromarray(np.asarray(anomaly_map, dtype=np.float32), mode="F")
    values = np.asarray(values.resize(size, Image.BILINEAR))
    colours = (colormaps[COLORMAP](stretch(values, value_range))[..., :3] * 255).astype(np.uint8)
    return Image.fromarray(colours, mode="RGB")


def upright_thumbnail(image_bytes: Optional[bytes], width: int, height: int, side: int) -> Any:
    """The image as scored (the scan's decoder), shrunk to fit ``side``; no bytes (the object
    vanished): a grey image of the same aspect."""
    from PIL import Image

    from vip2scan.model.images import open_upright

    image = open_upright(image_bytes) if image_bytes is not None else \
        Image.new("RGB", (max(1, width), max(1, height)), (128, 128, 128))
    image.thumbnail((side, side), Image.BICUBIC)
    return image


def thumbnail_and_overlay(image_bytes: Optional[bytes], anomaly_map: np.ndarray,
                          value_range: Optional[tuple[float, float]] = None,
                          side: int = THUMB_SIDE) -> tuple[bytes, bytes]:
    """The image shrunk to ``side`` and the same view with its anomaly map blended on top.

    The map only needs the image's aspect (read_map returns it at the image's own width x
    height), so the overlay keeps the image's shape instead of the model's square input.
    ``value_range``: the display stretch (:func:`display_range`); None colours [0, 1].
    """
    from PIL import Image

    height, width = anomaly_map.shape[:2]
    image = upright_thumbnail(image_bytes, width, height, side)
    blended = Image.blend(image, heat_image(anomaly_map, image.size, value_range), OVERLAY_ALPHA)
    return png_bytes(image), png_bytes(blended)


def peak_position(anomaly_map: np.ndarray) -> tuple[float, float]:
    """Where the map is highest, as fractions (x, y) of its width and height (pixel centres):
    valid on any resized copy, since maps cover the whole image."""
    values = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float32), nan=-np.inf)
    row, col = np.unravel_index(int(np.argmax(values)), values.shape)
    return (col + 0.5) / values.shape[1], (row + 0.5) / values.shape[0]


def fit_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(w, h) of a ``width`` x ``height`` image shrunk (never enlarged) to fit ``side``."""
    scale = min(1.0, side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit_map(anomaly_map: np.ndarray, side: int) -> np.ndarray:
    """A map shrunk (bilinear) to fit ``side``, keeping its aspect: what a page shows of it,
    small enough to keep many in memory."""
    from PIL import Image

    height, width = anomaly_map.shape[:2]
    size = fit_size(width, height, side)
    if size == (width, height):
        return np.asarray(anomaly_map, dtype=np.float32)
    values = Image.fromarray(np.asarray(anomaly_map, dtype=np.float32), mode="F")
    return np.asarray(values.resize(size, Image.BILINEAR), dtype=np.float32)
