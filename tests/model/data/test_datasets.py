"""Dataset readers: MVTec tree, VisA csv and manifests read identically from disk and S3."""

from __future__ import annotations

import csv
import io
import json

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vip2scan.model.data import readers as D
from vip2scan.model.images import load_image, load_mask
from vip2scan.model.data.synthetic import DEFECT_TYPES, encode_png, make_sample, write_mvtec_tree

CATS = ("wood_like", "tile")


def relative(samples, root):
    """Records with the root taken off their URIs, to compare two copies of a dataset."""
    strip = lambda u: u[len(root):] if u and u.startswith(root) else u  # noqa: E731
    return [(strip(s.image_uri), strip(s.mask_uri), s.label, s.category, s.defect)
            for s in samples]


def put_files(root, files: dict[str, bytes], storage_options=None):
    fs, base = fsspec.core.url_to_fs(root, **(storage_options or {}))
    for rel, data in files.items():
        fs.makedirs(f"{base}/{rel}".rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(f"{base}/{rel}", data)


@pytest.fixture
def roots(tmp_path, s3_server, s3_bucket):
    """(local root, s3 root, s3 storage options) for the same dataset in two places."""
    return str(tmp_path / "ds"), f"s3://{s3_bucket}/ds", s3_server.storage_options


def test_mvtec_local_equals_s3(roots):
    local, remote, opts = roots
    for root, so in ((local, None), (remote, opts)):
        write_mvtec_tree(root, categories=CATS, n_good=2, n_defect=1, size=24,
                         storage_options=so, n_train=1)
    got_local = D.read_mvtec(local)
    got_s3 = D.read_mvtec(remote, storage_options=opts)
    assert relative(got_local, local) == relative(got_s3, remote)
    assert len(got_local) == len(CATS) * (2 + len(DEFECT_TYPES))
    for s in got_local:
        assert (s.label == 1) == (s.defect != "good") and s.category in CATS
        assert (s.mask_uri is not None) == (s.label == 1)
        if s.mask_uri:
            stem = s.image_uri.rsplit("/", 1)[1][:-4]
            assert s.mask_uri == f"{local}/{s.category}/ground_truth/{s.defect}/{stem}_mask.png"
    train = D.read_mvtec(remote, split="train", categories=["tile"], storage_options=opts)
    assert [(s.category, s.label, s.image_uri[len(remote):]) for s in train] == [
        ("tile", 0, "/tile/train/good/000.png")]
    assert len(D.read_mvtec(local, split=None)) == len(got_local) + 2
    assert relative(D.read_dataset(remote, storage_options=opts), remote) == relative(
        got_local, local)


def test_mvtec_missing_mask_is_flagged(tmp_path):
    root = str(tmp_path / "m")
    write_mvtec_tree(root, categories=("disc",), n_good=1, n_defect=1, size=16)
    (tmp_path / "m/disc/ground_truth/blob/000_mask.png").unlink()
    samples = D.read_mvtec(root)
    missing = [s for s in samples if s.mask_missing]
    assert [s.defect for s in missing] == ["blob"] and missing[0].label == 1
    assert (len(samples), sum(s.label for s in samples), len(missing)) == (5, 4, 1)
    assert {s.category for s in samples} == {"disc"}
    with pytest.raises(FileNotFoundError):
        D.read_mvtec(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="no images"):
        D.read_dataset(root, categories=["tile"])  # nothing selected is an error, not []


def visa_files():
    """A two-object VisA-style dataset: images, masks and split_csv/1cls.csv."""
    files, rows = {}, []
    for obj, cat in (("candle", "disc"), ("pcb1", "tile")):
        for i, (split, defect) in enumerate([("train", None), ("test", None), ("test", "blob")]):
            img, mask = make_sample(cat, defect, size=24, seed=i)
            kind = "Anomaly" if defect else "Normal"
            image = f"{obj}/Data/Images/{kind}/{i:03d}.JPG"
            files[image] = encode_png(img, "jpg")
            mask_rel = f"{obj}/Data/Masks/Anomaly/{i:03d}.png" if defect else ""
            if defect:
                files[mask_rel] = encode_png(mask)
            rows.append([obj, split, "anomaly" if defect else "normal", image, mask_rel])
    text = io.StringIO()
    csv.writer(text).writerows([["object", "split", "label", "image", "mask"], *rows])
    files[D.VISA_CSV] = text.getvalue().encode()
    return files


def test_visa_local_equals_s3(roots):
    local, remote, opts = roots
    put_files(local, visa_files())
    put_files(remote, visa_files(), opts)
    test_local = D.read_visa(local)
    assert relative(test_local, local) == relative(D.read_visa(remote, storage_options=opts), remote)
    assert [(s.category, s.label, s.mask_uri is None) for s in test_local] == [
        ("candle", 0, True), ("candle", 1, False), ("pcb1", 0, True), ("pcb1", 1, False)]
    assert test_local[1].mask_uri == f"{local}/candle/Data/Masks/Anomaly/002.png"
    assert len(D.read_visa(local, split=None)) == 6
    assert [s.category for s in D.read_visa(local, split="train", categories={"pcb1"})] == ["pcb1"]
    assert relative(D.read_dataset(local), local) == relative(test_local, local)
    mask = load_mask(test_local[1].mask_uri, 24)
    assert np.array_equal(mask, make_sample("disc", "blob", 24, seed=2)[1] > 0)  # candle 002


def manifest_rows():
    rows = []
    for i, (cat, defect) in enumerate([("disc", None), ("disc", "scratch"), ("tile", "colour"),
                                       ("tile", None)]):
        rows.append({"image_uri": f"img/{i}.png", "label": int(defect is not None),
                     "category": cat, "mask_uri": f"masks/{i}.png" if i == 1 else "",
                     "split": "test" if i < 3 else "train"})
    return rows


def manifest_bytes(fmt: str, rows) -> bytes:
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().encode()
    if fmt == "jsonl":
        return "".join(json.dumps({**r, "mask_uri": r["mask_uri"] or None}) + "\n"
                       for r in rows).encode()
    buf = io.BytesIO()
    table = pa.Table.from_pylist([{**r, "mask_uri": r["mask_uri"] or None} for r in rows])
    pq.write_table(table, buf)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifest_local_equals_s3(roots, fmt):
    local, remote, opts = roots
    rows = manifest_rows()
    files = {f"manifest.{fmt}": manifest_bytes(fmt, rows)}
    for i, r in enumerate(rows):
        img, mask = make_sample(r["category"], "blob" if r["label"] else None, size=16, seed=i)
        files[r["image_uri"]] = encode_png(img)
        if r["mask_uri"]:
            files[r["mask_uri"]] = encode_png(mask)
    put_files(local, files)
    put_files(remote, files, opts)
    got = D.read_manifest(f"{local}/manifest.{fmt}")
    assert relative(got, local) == relative(
        D.read_dataset(f"{remote}/manifest.{fmt}", split=None, storage_options=opts), remote)
    assert relative(got, local) == [
        ("/img/0.png", None, 0, "disc", None), ("/img/1.png", "/masks/1.png", 1, "disc", None),
        ("/img/2.png", None, 1, "tile", None), ("/img/3.png", None, 0, "tile", None)]
    assert [s.mask_missing for s in got] == [False, False, True, False]
    assert len(D.read_manifest(f"{local}/manifest.{fmt}", split="test")) == 3
    # images load the same from both places
    a = load_image(got[1].image_uri, 8)
    b = load_image(f"{remote}/img/1.png", 8, storage_options=opts)
    assert np.array_equal(a, b) and a.shape == (8, 8, 3) and a.dtype == np.uint8


def test_manifest_validation(tmp_path):
    (tmp_path / "m.csv").write_text("image_uri,category\na.png,x\n")
    with pytest.raises(ValueError, match="label"):
        D.read_manifest(str(tmp_path / "m.csv"))
    (tmp_path / "m.csv").write_text("image_uri,label\ns3://b/a.png,defect\n/abs/b.png,ok\n")
    got = D.read_manifest(str(tmp_path / "m.csv"))
    assert [(s.image_uri, s.label, s.category) for s in got] == [
        ("s3://b/a.png", 1, "default"), ("/abs/b.png", 0, "default")]
    with pytest.raises(ValueError):
        D.parse_label("maybe")
    with pytest.raises(ValueError):
        D.read_manifest(str(tmp_path / "m.txt"))


def test_load_image_and_mask(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(img[..., 0]).convert("L").save(tmp_path / "gray.png")
    got = load_image(str(tmp_path / "a.png"), 16)
    want = np.asarray(Image.fromarray(img).resize((16, 16), Image.BICUBIC))
    assert np.array_equal(got, want)
    assert np.array_equal(load_image(f"file://{tmp_path}/a.png"), img)  # no size: as stored
    assert load_image(str(tmp_path / "gray.png"), 8).shape == (8, 8, 3)  # grey -> RGB
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:20] = 200
    mask[12:15, 5:20] = 1  # any non-zero pixel is a defect, as in the reference code
    Image.fromarray(mask).save(tmp_path / "m.png")
    got = load_mask(str(tmp_path / "m.png"), 20)
    assert got.dtype == bool and got.shape == (20, 20)
    assert np.array_equal(load_mask(str(tmp_path / "m.png"), 10)[:, :1], np.zeros((10, 1), bool))
    same = load_mask(f"file://{tmp_path}/m.png", 20)
    assert np.array_equal(got, same) and got[7].any() and got[13].any() and not got[0].any()
    assert not load_mask(None, 12).any() and load_mask(None, 12).shape == (12, 12)
