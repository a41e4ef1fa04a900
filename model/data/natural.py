"""An independent check of the embedded model: natural photographs with pasted defects.

The photographs are scikit-image's bundled sample images (``skimage.data``), which play no
part in training the embedded model (the generator draws its own products); the defects are
the generator's own (:func:`vip2scan.model.data.defects.add_defect`, every kind), so every mask
is exact. Writes an MVTec-style tree that ``vip2scan eval`` reads::

    python -m vip2scan.model.data.natural /tmp/natural-lake
    vip2scan eval /tmp/natural-lake --checkpoint embedded

scikit-image comes with the ``bench`` extra (``make`` installs it); it is never a dependency
of the scan.
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image

from .defects import ALL_DEFECTS, add_defect
from .synthetic import FileWriter, sub_seed, encode_png

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "retina", "hubble_deep_field", "immunohistochemistry",
          "camera", "brick", "grass", "gravel", "coins", "moon")


def _photo(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.dtype != np.uint8:
        image = (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-9)).astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def crops(photo: np.ndarray, count: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` square crops (half to all of the shorter side) resized to ``size``."""
    height, width = photo.shape[:2]
    out = []
    for _ in range(count):
        side = int(min(height, width) * rng.uniform(0.5, 1.0))
        y, x = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC)
        out.append(np.asarray(crop))
    return out


def write_natural_tree(root: str, per_photo: int = 4, size: int = 224, seed: int = 3,
                       storage_options: dict | None = None) -> str:
    """natural/test/good/*.png, natural/test/<defect>/*.png and their ground_truth masks:
    ``per_photo`` crops of each photo, every other one with a pasted defect (kinds in turn)."""
    out = FileWriter(root, storage_options)
    count = 0
    for name in PHOTOS:
        rng = np.random.default_rng(sub_seed(seed, name))
        for image in crops(_photo(name), per_photo, size, rng):
            if count % 2 == 0:
                out.put(f"natural/test/good/{name}_{count:03d}.png", encode_png(image))
            else:
                defect = ALL_DEFECTS[(count // 2) % len(ALL_DEFECTS)]
                damaged, mask = add_defect(image, np.ones(image.shape[:2], bool), defect, rng)
                out.put(f"natural/test/{defect}/{name}_{count:03d}.png", encode_png(damaged))
                out.put(f"natural/ground_truth/{defect}/{name}_{count:03d}_mask.png", encode_png(mask))
            count += 1
    out.flush()
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m vip2scan.model.data.natural OUT_DIR")
    print(write_natural_tree(sys.argv[1]))
