"""Synthetic defects: determinism, exact masks, visibility, MVTec tree and lake layouts."""

from __future__ import annotations

import io
import re

import fsspec
import numpy as np
import pytest
from PIL import Image

from vip2scan.model.data import synthetic
from vip2scan.model.data.synthetic import (ALL_CATEGORIES, ALL_DEFECTS, CATEGORIES, DEFECT_TYPES, MIN_DELTA, make_base,
                                      make_sample, write_lake, write_mvtec_tree)


def read_png(path) -> np.ndarray:
    with fsspec.open(str(path), "rb") as f:
        return np.asarray(Image.open(io.BytesIO(f.read())))


def test_catalogue():
    assert len(CATEGORIES) >= 6 and len(set(CATEGORIES)) == len(CATEGORIES)
    assert set(synthetic.TEXTURES) | set(synthetic.OBJECTS) == set(CATEGORIES)
    assert synthetic.TEXTURES and synthetic.OBJECTS
    assert DEFECT_TYPES == ("scratch", "blob", "cutpaste", "colour")


@pytest.mark.parametrize("defect", (None,) + ALL_DEFECTS)
def test_same_seed_same_bytes(defect):
    for cat in ALL_CATEGORIES:
        a_img, a_mask = make_sample(cat, defect, size=48, seed=7)
        b_img, b_mask = make_sample(cat, defect, size=48, seed=7)
        assert synthetic.encode_png(a_img) == synthetic.encode_png(b_img)
        assert synthetic.encode_png(a_mask) == synthetic.encode_png(b_mask)
        c_img, _ = make_sample(cat, defect, size=48, seed=8)
        assert not np.array_equal(a_img, c_img)


def test_shapes_and_types():
    img, mask = make_sample("disc", "blob", size=40, seed=1)
    assert img.shape == (40, 40, 3) and img.dtype == np.uint8
    assert mask.shape == (40, 40) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255}
    good_img, good_mask = make_sample("disc", None, size=40, seed=1)
    assert not good_mask.any() and np.array_equal(good_img, make_base("disc", 40, 1)[0])
    with pytest.raises(ValueError):
        make_sample("nope", None)
    with pytest.raises(ValueError):
        make_sample("disc", "nope")


@pytest.mark.parametrize("defect", ALL_DEFECTS)
def test_mask_is_exactly_the_changed_pixels(defect):
    for cat in ALL_CATEGORIES:
        for seed in range(3):
            base, fg = make_base(cat, size=64, seed=seed)
            img, mask = make_sample(cat, defect, size=64, seed=seed)
            changed = (img != base).any(axis=-1)
            assert np.array_equal(changed, mask > 0), (cat, defect, seed)
            assert changed.sum() >= 12
            # visible: every defect pixel moved by at least MIN_DELTA in some channel
            delta = np.abs(img.astype(int) - base.astype(int)).max(axis=-1)
            assert delta[changed].min() >= MIN_DELTA
            # on the product, not on the table it lies on
            assert not (changed & ~fg).any(), (cat, defect, seed)


def test_defects_vary():
    masks = [make_sample("tile", "blob", size=64, seed=s)[1] > 0 for s in range(6)]
    areas = {int(m.sum()) for m in masks}
    centres = {tuple(np.argwhere(m).mean(0).round()) for m in masks}
    assert len(areas) == 6 and len(centres) == 6


def test_mvtec_tree_layout(tmp_path):
    root = str(tmp_path / "mvtec")
    cats = ("carpet_like", "disc")
    assert write_mvtec_tree(root, categories=cats, n_good=2, n_defect=1, size=32,
                            n_train=3) == root
    files = {p.relative_to(root).as_posix() for p in (tmp_path / "mvtec").rglob("*") if p.is_file()}
    expected = set()
    for c in cats:
        expected |= {f"{c}/train/good/{i:03d}.png" for i in range(3)}
        expected |= {f"{c}/test/good/{i:03d}.png" for i in range(2)}
        for d in DEFECT_TYPES:
            expected |= {f"{c}/test/{d}/000.png", f"{c}/ground_truth/{d}/000_mask.png"}
    assert files == expected
    img = read_png(tmp_path / "mvtec/disc/test/scratch/000.png")
    mask = read_png(tmp_path / "mvtec/disc/ground_truth/scratch/000_mask.png")
    assert img.shape == (32, 32, 3) and mask.shape == (32, 32)
    assert set(np.unique(mask)) == {0, 255}
    # train and test normals are different images
    a = read_png(tmp_path / "mvtec/disc/train/good/000.png")
    assert not np.array_equal(a, read_png(tmp_path / "mvtec/disc/test/good/000.png"))
    # the whole tree is a function of the seed
    write_mvtec_tree(str(tmp_path / "again"), categories=cats, n_good=2, n_defect=1, size=32,
                     n_train=3)
    for rel in expected:
        assert (tmp_path / "again" / rel).read_bytes() == (tmp_path / "mvtec" / rel).read_bytes()


def test_lake_local_nested_and_flat(tmp_path):
    root = str(tmp_path / "lake")
    records = write_lake(root, n_images=40, defect_fraction=0.3, size=32, seed=3)
    assert len(records) == 40
    assert {r["label"] for r in records} == {0, 1}
    for r in records:
        rel = r["image_uri"][len(root) + 1:]
        assert re.fullmatch(r"line\d+/day\d\d/img_\d{5}\.png", rel)
        assert (r["label"] == 1) == (r["defect"] in DEFECT_TYPES)
        assert r["category"] in CATEGORIES
        assert read_png(r["image_uri"]).shape == (32, 32, 3)
    root2 = str(tmp_path / "lake2")
    again = write_lake(root2, 40, 0.3, 32, seed=3)
    for r, q in zip(records, again):  # same seed, same lake, wherever it is written
        assert r["image_uri"][len(root):] == q["image_uri"][len(root2):]
        assert (r["label"], r["category"], r["defect"]) == (q["label"], q["category"], q["defect"])
        assert open(r["image_uri"], "rb").read() == open(q["image_uri"], "rb").read()

    flat = write_lake(str(tmp_path / "flat"), 5, size=32, nested=False, fmt="jpg")
    assert [r["image_uri"].rsplit("/", 1)[1] for r in flat] == [f"img_{i:05d}.jpg" for i in range(5)]
    assert (tmp_path / "flat/img_00004.jpg").read_bytes()[:2] == b"\xff\xd8"  # JPEG magic


def test_writers_to_s3(s3_server, s3_bucket, tmp_path):
    opts = s3_server.storage_options
    root = f"s3://{s3_bucket}/lake"
    records = write_lake(root, n_images=6, size=24, storage_options=opts)
    fs = s3_server.filesystem()
    for r in records:
        assert r["image_uri"].startswith(root + "/line")
        assert fs.exists(r["image_uri"])
    local = write_lake(str(tmp_path / "lake"), n_images=6, size=24)
    for r, q in zip(records, local):
        assert fs.cat(r["image_uri"]) == open(q["image_uri"], "rb").read()
    write_mvtec_tree(f"s3://{s3_bucket}/mvtec", categories=("tile",), n_good=1, n_defect=1,
                     size=24, storage_options=opts)
    assert fs.exists(f"{s3_bucket}/mvtec/tile/ground_truth/colour/000_mask.png")


def test_the_held_out_split_is_disjoint_from_training():
    from vip2scan.model.data import splits

    assert set(splits.HELD_OUT_CATEGORIES).isdisjoint(splits.TRAIN_CATEGORIES)
    assert set(splits.HELD_OUT_DEFECTS).isdisjoint(splits.TRAIN_DEFECTS)
    assert set(splits.HELD_OUT_CATEGORIES) | set(splits.TRAIN_CATEGORIES) == set(ALL_CATEGORIES)
    assert set(splits.HELD_OUT_DEFECTS) | set(splits.TRAIN_DEFECTS) == set(ALL_DEFECTS)


def test_lake_masks_are_kept_aside(tmp_path):
    from PIL import Image

    records = synthetic.write_lake(str(tmp_path / "lake"), 12, defect_fraction=0.5, size=48,
                                   mask_root=str(tmp_path / "masks"))
    for r in records:
        if r["label"]:
            mask = np.asarray(Image.open(r["mask_uri"]))
            assert mask.shape == (48, 48) and mask.max() == 255
        else:
            assert r["mask_uri"] is None
    assert not list((tmp_path / "lake").rglob("*mask*"))
