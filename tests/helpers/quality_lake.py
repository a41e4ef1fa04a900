"""A small lake whose defects are known to the pixel, in every shape a user's files come in,
for the end-to-end quality tests of the embedded checkpoint.

Each case is an image file plus the mask of its *upright* picture (what a person sees):
square PNGs of every product, non-square crops (640 x 480 and 300 x 700), sideways JPEGs
with an EXIF orientation, and 16-bit greyscale PNGs. The tests scan the lake, read each map
back at the image's own size with ``read_map`` and compare it with the mask.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vip2scan.model.data.synthetic import ALL_CATEGORIES, make_sample
from vip2scan.model.metrics.peaks import half_patch_reach, peak_on_defect

DEFECTS = ("scratch", "blob", "colour", "crack", "spots", "cutpaste")


@dataclass(frozen=True)
class Case:
    name: str  # relative key in the lake
    kind: str  # square | non_square | exif | sixteen_bit
    data: bytes
    mask: np.ndarray  # bool [height, width] of the upright image
    defective: bool


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _cropped_sample(category: str, defect: str | None, width: int, height: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A width x height picture: the centre crop of a square sample, keeping the whole defect."""
    side = max(width, height)
    for attempt in range(20):
        image, mask = make_sample(category, defect, side, seed + attempt)
        y0, x0 = (side - height) // 2, (side - width) // 2
        crop, crop_mask = image[y0:y0 + height, x0:x0 + width], mask[y0:y0 + height, x0:x0 + width]
        if defect is None or crop_mask.sum() == mask.sum():
            return crop, crop_mask > 127
    raise RuntimeError(f"no seed near {seed} keeps the {defect} of {category} inside the crop")


def quality_cases(seed: int = 0) -> list[Case]:
    cases: list[Case] = []
    for i, category in enumerate(ALL_CATEGORIES):  # one defective and every third one normal
        defect = DEFECTS[i % len(DEFECTS)]
        image, mask = make_sample(category, defect, 224, seed + 100 + i)
        cases.append(Case(f"square/{category}_{defect}.png", "square", _png(image), mask > 127, True))
        if i % 3 == 0:
            image, mask = make_sample(category, None, 224, seed + 200 + i)
            cases.append(Case(f"square/{category}_good.png", "square", _png(image), mask > 127, False))
    for j, (category, defect, width, height) in enumerate((("tile", "blob", 640, 480),
                                                           ("carpet_like", "colour", 300, 700),
                                                           ("pill", "scratch", 640, 480))):
        image, mask = _cropped_sample(category, defect, width, height, seed + 300 + 10 * j)
        cases.append(Case(f"non_square/{category}_{width}x{height}.png", "non_square", _png(image), mask, True))
    for j, (category, defect) in enumerate((("disc", "spots"), ("leather_like", "blob"))):
        upright, mask = _cropped_sample(category, defect, 320, 240, seed + 400 + 10 * j)
        # Stored turned 90 degrees anticlockwise; EXIF orientation 6 says "turn clockwise to view".
        stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))
        exif = Image.Exif()
        exif[0x0112] = 6
        buf = io.BytesIO()
        stored.save(buf, format="JPEG", quality=95, exif=exif)
        cases.append(Case(f"exif/{category}_rotated.jpg", "exif", buf.getvalue(), mask, True))
    for j, (category, defect) in enumerate((("hexnut", "scratch"), ("tile", "crack"))):
        image, mask = make_sample(category, defect, 256, seed + 500 + j)
        grey = (np.asarray(Image.fromarray(image).convert("L")).astype(np.uint16) * 257)
        cases.append(Case(f"sixteen_bit/{category}.png", "sixteen_bit", _png(grey), mask > 127, True))
    return cases


def write_cases(cases: list[Case], put) -> None:
    """``put(name, data)`` writes one file (a local folder or a bucket)."""
    for case in cases:
        put(case.name, case.data)


def map_quality(cases: list[Case], maps: dict[str, np.ndarray], model_size: int = 112, patch: int = 8
                ) -> dict[str, float]:
    """Pixel AUROC over all the cases' pixels, and the share of defective cases whose map peaks
    on the defect: inside its mask, or within half a patch of it (the model sees the image as a
    grid of ``patch``-pixel patches at ``model_size``; half a patch, in the image's own pixels).
    ``maps``: case name -> map at the image's own size."""
    from sklearn.metrics import roc_auc_score

    for case in cases:
        got = maps[case.name].shape
        assert got == case.mask.shape, f"{case.name}: map {got} vs image {case.mask.shape}"
    truth = np.concatenate([c.mask.ravel() for c in cases])
    scores = np.concatenate([maps[c.name].ravel() for c in cases])
    peaks = [peak_on_defect(c.mask, maps[c.name], half_patch_reach(patch, model_size, *c.mask.shape))
             for c in cases if c.defective]
    return {"pixel_auroc": float(roc_auc_score(truth, scores)), "peak_on_defect": float(np.mean(peaks)),
            "defective": len(peaks)}


# ------------------------------------------------------------------ reading heat back from pictures
def _turbo_lut() -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps["turbo"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.float32)


def heat_values(heat_rgb: np.ndarray) -> np.ndarray:
    """The colour-mapped heat picture [H, W, 3] back to values in [0, 1] (nearest turbo colour)."""
    lut = _turbo_lut()
    flat = heat_rgb.reshape(-1, 3).astype(np.float32)
    nearest = np.argmin(((flat[:, None, :] - lut[None]) ** 2).sum(-1), axis=1)
    return (nearest / 255.0).reshape(heat_rgb.shape[:2])


def hot_spot(values: np.ndarray) -> tuple[float, float]:
    """(x, y) as fractions of width and height: the centre of the hottest 1 % of pixels."""
    cut = np.quantile(values, 0.99)
    ys, xs = np.nonzero(values >= cut)
    return (xs.mean() + 0.5) / values.shape[1], (ys.mean() + 0.5) / values.shape[0]


def overlay_heat(thumbnail_png: bytes, overlay_png: bytes, alpha: float = 0.5) -> np.ndarray:
    """The heat picture inside a report overlay (thumbnail blended with the heat at ``alpha``)."""
    thumb = np.asarray(Image.open(io.BytesIO(thumbnail_png)).convert("RGB"), np.float32)
    over = np.asarray(Image.open(io.BytesIO(overlay_png)).convert("RGB"), np.float32)
    assert thumb.shape == over.shape, (thumb.shape, over.shape)
    return np.clip((over - (1 - alpha) * thumb) / alpha, 0, 255)


def inside(mask: np.ndarray, x: float, y: float, margin: float = 0.03) -> bool:
    """Whether the point at fractions (x, y) of the picture is on the defect, give or take
    ``margin`` of the longest side (display rounding, a hot spot on a thin scratch's edge)."""
    height, width = mask.shape
    reach = max(1, int(round(margin * max(height, width))))
    col, row = int(x * width), int(y * height)
    window = mask[max(0, row - reach):row + reach + 1, max(0, col - reach):col + reach + 1]
    return bool(window.any())
