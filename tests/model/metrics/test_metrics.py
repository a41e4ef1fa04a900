"""Metrics: scikit-learn equality, exact AUPRO against a brute-force spec loop, streaming."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import (auc, average_precision_score, precision_recall_curve,
                             roc_auc_score)

from tests.helpers.defect_maps import disc_masks_and_maps

from vip2scan.model.metrics import exact as M
from vip2scan.model.metrics.streaming import StreamingPixelMetrics
from vip2scan.model.metrics.table import CategoryMetrics, metrics_table

EIGHT = np.ones((3, 3), int)
FOUR = ndimage.generate_binary_structure(2, 1)


def spec_aupro(masks, maps, structure=EIGHT, n=200, max_fpr=0.3, sort_by_fpr=False):
    """The spec's AUPRO, written as plainly as possible (one threshold at a time).
    sort_by_fpr=True is the variant the spec warns against."""
    masks, maps = np.asarray(masks, bool), np.asarray(maps, np.float64)
    lo, hi = maps.min(), maps.max()
    fprs, pros = [], []
    for j in range(n):
        t = lo + j * ((hi - lo) / n)  # as np.arange(lo, hi, (hi - lo) / n) in the reference
        detected = maps > t
        fractions = []
        for d, mask in zip(detected, masks):
            labels, count = ndimage.label(mask, structure=structure)
            for r in range(1, count + 1):
                fractions.append(d[labels == r].mean())
        pros.append(np.mean(fractions))
        fprs.append((detected & ~masks).sum() / (~masks).sum())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < max_fpr
    x, y = fprs[keep], pros[keep]
    x = (x - x.min()) / (x.max() - x.min())
    if sort_by_fpr:
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
    return auc(x, y)


def sklearn_f1_max(y, s):
    p, r, _ = precision_recall_curve(y, s)
    f1 = 2 * p * r / np.where(p + r > 0, p + r, 1)
    return f1.max()


def smooth_maps(n, size, seed, signal=0.08):
    """Maps in [0.1, 0.9]: smooth noise + a blurred defect bump (see defect_maps.py)."""
    masks, maps = disc_masks_and_maps(n, size, seed, min_radius=2, radius_div=5, noise_blur=2,
                                      signal=signal, signal_blur=2)
    return masks, (0.1 + 0.8 * maps).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_ranking_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(500) < 0.3
    s = np.round(rng.random(500) + 0.4 * y, 2)  # rounding makes many ties
    assert M.image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.image_ap(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert M.f1_max(y, s) == pytest.approx(sklearn_f1_max(y, s), abs=1e-12)
    t = M.best_threshold(y, s)
    pred = s >= t
    f1 = 2 * (pred & y).sum() / (pred.sum() + y.sum())
    assert f1 == pytest.approx(M.f1_max(y, s), abs=1e-12)


def test_pixel_metrics_equal_sklearn():
    masks, maps = smooth_maps(6, 24, seed=1)
    y, s = masks.ravel(), maps.ravel()
    assert M.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-10)
    assert M.pixel_f1_max(masks, maps) == pytest.approx(sklearn_f1_max(y, s), abs=1e-10)
    got = M.pixel_metrics(masks.astype(np.uint8) * 255, maps)  # {0,255} masks work too
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-10)
    assert got["pixel_aupro"] == pytest.approx(M.aupro(masks, maps), abs=1e-12)


def test_undefined_metrics_are_nan():
    assert math.isnan(M.image_auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(M.image_ap([0, 0], [0.1, 0.2]))
    assert math.isnan(M.aupro(np.zeros((2, 8, 8)), np.random.default_rng(0).random((2, 8, 8))))
    mask = np.zeros((8, 8))
    mask[2:4, 2:4] = 1
    assert math.isnan(M.aupro(mask, np.full((8, 8), 0.5)))  # constant map


def ramp_background(shape, hi=0.5):
    """Normal-pixel scores spread evenly over [0, hi] so the FPR takes many values."""
    return np.linspace(0, hi, np.prod(shape)).reshape(shape)


def test_aupro_one_region_full_one_half():
    masks = np.zeros((2, 16, 16), bool)
    maps = np.stack([ramp_background((16, 16)), ramp_background((16, 16))[::-1]])
    masks[0, 3:7, 3:7] = True
    maps[0, 3:7, 3:7] = 0.9  # fully detected at every threshold below 0.9
    masks[1, 8:12, 2:8] = True
    maps[1, 8:12, 2:5] = 0.9  # left half detected ...
    maps[1, 8:12, 5:8] = 0.05  # ... right half almost never
    want = spec_aupro(masks, maps)
    assert M.aupro(masks, maps) == pytest.approx(want, abs=1e-6)
    assert M.aupro_loop(masks, maps) == pytest.approx(want, abs=1e-6)
    # every threshold with FPR < 0.3 lies in [0.05, 0.9): PRO = (1 + 1/2) / 2 throughout
    assert want == pytest.approx(0.75, abs=1e-12)


def test_aupro_uses_8_connectivity():
    mask = np.zeros((12, 12), bool)
    mask[2:4, 2:4] = True  # 4 px, detected
    mask[4:7, 4:7] = True  # 9 px touching the first only at a corner, missed
    maps = ramp_background((12, 12))
    maps[2:4, 2:4] = 0.95
    maps[4:7, 4:7] = 0.01
    eight, four = spec_aupro(mask[None], maps[None], EIGHT), spec_aupro(mask[None], maps[None], FOUR)
    # one region of 13 px with 4 detected vs two regions (one detected, one missed)
    assert eight == pytest.approx(4 / 13, abs=1e-12) and four == pytest.approx(0.5, abs=1e-12)
    assert M.aupro(mask, maps) == pytest.approx(eight, abs=1e-6)
    assert M.aupro_loop(mask, maps) == pytest.approx(eight, abs=1e-6)


def test_aupro_keeps_threshold_order_when_fprs_tie():
    rng = np.random.default_rng(0)
    maps = np.round(rng.random((3, 16, 16)) * 8) / 8 * 0.6  # few normal values: FPR ties
    masks = np.zeros((3, 16, 16), bool)
    masks[0, 2:8, 2:8] = masks[1, 5:9, 5:12] = True
    maps[masks] = 0.1 + 0.9 * rng.random(masks.sum())  # defect scores spread finely
    want = spec_aupro(masks, maps)
    assert abs(spec_aupro(masks, maps, sort_by_fpr=True) - want) > 0.01
    assert M.aupro(masks, maps) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(3))
def test_aupro_equals_spec_loop_on_random_maps(seed, dtype):
    masks, maps = smooth_maps(5, 20, seed)
    maps = maps.astype(dtype)
    want = spec_aupro(masks, maps)
    assert M.aupro(masks, maps) == pytest.approx(want, abs=1e-6)
    # scores sitting exactly on thresholds (and one ulp either side) are the hard case
    t = M.pro_thresholds(0.0, 1.0)
    rng = np.random.default_rng(seed)
    on = t[rng.integers(0, 200, maps.shape)]
    on = np.nextafter(on, on + rng.choice([-1.0, 0.0, 1.0], maps.shape))  # 0: stay on it
    on.flat[0], on.flat[-1] = 0.0, 1.0
    on = on.astype(dtype)
    assert M.aupro(masks, on) == pytest.approx(spec_aupro(masks, on), abs=1e-6)


def test_count_below_is_searchsorted():
    t = M.pro_thresholds(0.123, 0.987)
    s = np.concatenate([t, np.nextafter(t, 2), np.nextafter(t, -2)])
    s = s[(s >= t[0]) & (s <= 0.987)]
    for dtype in (np.float64, np.float32):
        x = s.astype(dtype)
        x = x[x >= t[0]]
        assert np.array_equal(M._count_below(t, x), np.searchsorted(t, x))


def test_aupro_fast_equals_loop_bigger():
    masks, maps = smooth_maps(12, 48, seed=5)
    assert M.aupro(masks, maps) == pytest.approx(M.aupro_loop(masks, maps), abs=1e-9)
    assert M.aupro(masks, maps, chunk_pixels=48 * 48 * 5) == pytest.approx(
        M.aupro(masks, maps), abs=1e-12)  # chunking over images changes nothing


@pytest.mark.parametrize("seed, width", [(0, 0.8), (1, 0.8), (2, 0.8), (0, 0.01)])
def test_streaming_close_to_exact(seed, width):
    masks, maps = smooth_maps(30, 40, seed)
    maps = (0.5 + (maps - 0.5) * width / 0.8).astype(np.float32)  # width 0.01: ~650 bins used
    exact = M.pixel_metrics(masks, maps)
    stream = StreamingPixelMetrics()
    for start in range(0, 30, 7):  # uneven batches
        stream.update(maps[start:start + 7], masks[start:start + 7])
    got = stream.result()
    for key in M.PIXEL_KEYS:
        assert abs(got[key] - exact[key]) < 0.005, (key, got[key], exact[key])
    # parallel workers' accumulators merge into the same numbers
    a, b = StreamingPixelMetrics(), StreamingPixelMetrics()
    a.update(maps[:11], masks[:11])
    b.update(maps[11:], masks[11:])
    merged = a.merge(b).result()
    for key in M.PIXEL_KEYS:
        assert merged[key] == pytest.approx(got[key], abs=1e-12)


def test_streaming_memory_does_not_grow():
    stream = StreamingPixelMetrics(n_bins=1024)
    masks, maps = smooth_maps(4, 16, seed=0)
    sizes = []
    for _ in range(5):
        stream.update(maps, masks)
        sizes.append(sum(v.nbytes for v in vars(stream).values() if isinstance(v, np.ndarray)))
    assert len(set(sizes)) == 1 and sizes[0] == 3 * 1024 * 8


def test_image_accumulator_and_category_table():
    rng = np.random.default_rng(0)
    masks, maps = smooth_maps(12, 16, seed=2)
    labels = masks.any(axis=(1, 2)).astype(int)
    scores = maps.max(axis=(1, 2)) + rng.normal(0, 0.01, 12)
    cats = ["a"] * 6 + ["b"] * 6
    has_mask = np.ones(12, bool)
    has_mask[1] = False  # an anomalous image whose mask is unknown
    exact, stream = CategoryMetrics(), CategoryMetrics(streaming=True)
    for acc in (exact, stream):
        for start in (0, 5):
            sl = slice(start, start + 5) if start == 0 else slice(5, 12)
            acc.update(cats[sl], scores[sl], labels[sl], maps[sl], masks[sl], has_mask[sl])
    res = exact.results()
    assert res["a"]["n_images"] == 6 and res["a"]["n_anomalous_without_mask"] == 1
    assert res["a"]["n_anomalous"] == labels[:6].sum()
    assert res["a"]["image_auroc"] == pytest.approx(roc_auc_score(labels[:6], scores[:6]))
    assert res["b"]["image_ap"] == pytest.approx(average_precision_score(labels[6:], scores[6:]))
    keep = np.r_[0, 2:6]  # pixel metrics of "a" leave image 1 out
    assert res["a"]["pixel_aupro"] == pytest.approx(M.aupro(masks[keep], maps[keep]), abs=1e-12)
    assert res["a"]["pixel_auroc"] == pytest.approx(
        roc_auc_score(masks[keep].ravel(), maps[keep].ravel()), abs=1e-10)
    for cat, row in stream.results().items():
        for key in M.PIXEL_KEYS:
            assert abs(row[key] - res[cat][key]) < 0.01
    table = exact.table()
    assert [r["category"] for r in table] == ["a", "b", "mean"]
    assert table[-1]["image_auroc"] == pytest.approx(
        (res["a"]["image_auroc"] + res["b"]["image_auroc"]) / 2)
    assert table[-1]["n_images"] == 12
    # a metric undefined for one category is averaged over the others
    rows = metrics_table({"x": {"pixel_aupro": 0.8}, "y": {"pixel_aupro": math.nan}})
    assert rows[-1]["pixel_aupro"] == pytest.approx(0.8)
    # image-only updates leave pixel metrics NaN
    only = CategoryMetrics()
    only.update(["c"] * 4, [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    row = only.results()["c"]
    assert row["image_auroc"] == pytest.approx(0.75) and math.isnan(row["pixel_aupro"])


def test_calibrate_thresholds_reach_f1_max():
    """What `eval --calibrate` writes: the pooled image and pixel thresholds at F1-max."""
    from vip2scan.model.training.evaluation import EvalAccumulator

    masks, maps = smooth_maps(9, 20, seed=4)
    labels = masks.any(axis=(1, 2))
    scores = maps.max(axis=(1, 2))
    batch = {"category": np.array(["a", "b", "c"] * 3, object), "label": labels.astype(np.int64),
             "has_mask": np.ones(9, bool), "image_score": scores.astype(np.float32),
             "anomaly_map": maps.astype(np.float32), "mask": masks}
    order = np.argsort(batch["category"], kind="stable")
    acc = EvalAccumulator("exact", calibrate=True)
    acc.update({k: v[order] for k, v in batch.items()})
    got = acc.result()
    pred = scores >= got.image_threshold
    assert 2 * (pred & labels).sum() / (pred.sum() + labels.sum()) == pytest.approx(
        M.f1_max(labels, scores.astype(np.float32)))
    pix = maps >= got.pixel_threshold
    f1 = 2 * (pix & masks).sum() / (pix.sum() + masks.sum())
    assert f1 == pytest.approx(M.pixel_f1_max(masks, maps), abs=1e-3)  # a 2**-16 bin edge
    none = EvalAccumulator("exact", calibrate=True)
    none.update({k: v[:2] * 0 if k in ("label",) else v[:2] for k, v in batch.items()}
                | {"mask": np.zeros((2, 20, 20), bool), "category": np.array(["a", "a"], object)})
    assert none.result().image_threshold is None and none.result().pixel_threshold is None
