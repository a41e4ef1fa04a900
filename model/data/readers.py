"""Labelled datasets as lists of :class:`Sample`, read through fsspec (local, file://, s3://).

Layouts: MVTec AD (:func:`read_mvtec`), VisA's ``split_csv/1cls.csv`` (:func:`read_visa`),
and a generic manifest in CSV, JSONL or Parquet (:func:`read_manifest`);
:func:`read_dataset` picks one from the URI. Anomalous images without a mask are kept
(image-level metrics only) and flagged by ``Sample.mask_missing``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

import fsspec
import numpy as np

from ..errors import DatasetError
from ..files import is_uri, join_uri, read_text

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".ndjson", ".parquet", ".pq")
VISA_CSV = "split_csv/1cls.csv"
_NORMAL_WORDS = {"0", "normal", "good", "ok", "false"}
_ANOMALY_WORDS = {"1", "anomaly", "anomalous", "abnormal", "defect", "defective", "bad", "ng",
                  "true"}


@dataclass(frozen=True)
class Sample:
    """One labelled image. label: 0 normal, 1 anomalous; mask_uri None = no pixel truth."""

    image_uri: str
    mask_uri: str | None
    label: int
    category: str
    defect: str | None = None  # defect type where the layout names it ("good" for normal)

    @property
    def mask_missing(self) -> bool:
        """Anomalous but without a mask: usable for image metrics only."""
        return self.label == 1 and self.mask_uri is None


def _list_relative(root: str, storage_options: dict | None) -> list[str]:
    """All file paths under root, relative to it, sorted (one recursive listing)."""
    fs, base = fsspec.core.url_to_fs(root, **(storage_options or {}))
    base = base.rstrip("/")
    found = fs.find(base)
    if not found:
        raise FileNotFoundError(f"no files under {root}")
    return sorted(p[len(base) + 1:] for p in found if p.startswith(base + "/"))


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _want(value: str | None, allowed) -> bool:
    return allowed is None or value in allowed


def read_mvtec(root: str, split: str | None = "test", categories=None,
               storage_options: dict | None = None) -> list[Sample]:
    """MVTec AD tree: <cat>/test/<defect>/<stem>.png with <cat>/ground_truth/<defect>/
    <stem>_mask.png; "good" is normal. split: "test", "train" (train/good) or None (both)."""
    files = _list_relative(root, storage_options)
    present = set(files)
    samples = []
    for rel in files:
        parts = rel.split("/")
        if len(parts) != 4 or not _is_image(rel) or parts[1] not in ("train", "test"):
            continue
        cat, part, defect, name = parts
        if not (_want(cat, categories) and (split is None or part == split)):
            continue
        if defect == "good":
            samples.append(Sample(join_uri(root, rel), None, 0, cat, "good"))
            continue
        stem = name.rsplit(".", 1)[0]
        masks = [f"{cat}/ground_truth/{defect}/{stem}_mask{ext}" for ext in IMAGE_EXTENSIONS]
        mask = next((m for m in masks if m in present), None)
        samples.append(Sample(join_uri(root, rel), mask and join_uri(root, mask), 1, cat, defect))
    return samples


def parse_label(value) -> int:
    """0/1, bools, or words such as normal/good and anomaly/defect -> 0 or 1."""
    if isinstance(value, (bool, int, np.integer, float, np.floating)):
        return int(float(value) > 0)
    word = str(value).strip().lower()
    if word in _NORMAL_WORDS:
        return 0
    if word in _ANOMALY_WORDS:
        return 1
    raise DatasetError(f"cannot read a label from {value!r}")


def _optional(value) -> str | None:
    """Empty cells (None, '', NaN) -> None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    value = str(value).strip()
    return value or None


def _read_text(uri: str, storage_options: dict | None) -> str:
    text = read_text(uri, storage_options)
    if text is None:
        raise FileNotFoundError(f"{uri} does not exist")
    return text


def read_visa(root: str, split: str | None = "test", categories=None,
              storage_options: dict | None = None, csv_path: str = VISA_CSV) -> list[Sample]:
    """VisA via its split csv (columns object, split, label, image, mask; paths relative to
    root; label normal/anomaly). split: "train", "test" or None (all rows)."""
    rows = csv.DictReader(io.StringIO(_read_text(join_uri(root, csv_path), storage_options)))
    samples = []
    for row in rows:
        cat, row_split = row["object"], row["split"]
        if not (_want(cat, categories) and (split is None or row_split == split)):
            continue
        mask = _optional(row.get("mask"))
        samples.append(Sample(join_uri(root, row["image"]), mask and join_uri(root, mask),
                              parse_label(row["label"]), cat))
    return samples


def _resolve(uri: str, base: str) -> str:
    """Relative paths in a manifest are relative to the manifest's folder."""
    if is_uri(uri) or uri.startswith("/"):
        return uri
    return join_uri(base, uri)


def _manifest_rows(uri: str, storage_options: dict | None) -> list[dict]:
    lower = uri.lower()
    if not lower.endswith(MANIFEST_EXTENSIONS):
        raise DatasetError(f"manifest must end with one of {MANIFEST_EXTENSIONS}: {uri}")
    if lower.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        with fsspec.open(uri, "rb", **(storage_options or {})) as f:
            return pq.read_table(f).to_pylist()
    text = _read_text(uri, storage_options)
    if lower.endswith((".jsonl", ".ndjson")):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return list(csv.DictReader(io.StringIO(text)))


def read_manifest(uri: str, split: str | None = None, categories=None,
                  storage_options: dict | None = None) -> list[Sample]:
    """Manifest (CSV, JSONL or Parquet) with columns image_uri, label and optionally
    mask_uri, category (default "default"), defect, split (filtered when both the column
    and ``split`` are given). Relative URIs are resolved against the manifest's folder."""
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    samples = []
    for i, row in enumerate(_manifest_rows(uri, storage_options)):
        if "image_uri" not in row or "label" not in row:
            raise DatasetError(f"{uri} row {i}: needs image_uri and label, has {sorted(row)}")
        cat = _optional(row.get("category")) or "default"
        row_split = _optional(row.get("split"))
        if not _want(cat, categories) or (split and row_split and row_split != split):
            continue
        mask = _optional(row.get("mask_uri"))
        samples.append(Sample(_resolve(str(row["image_uri"]), base),
                              mask and _resolve(mask, base), parse_label(row["label"]), cat,
                              _optional(row.get("defect"))))
    return samples


def read_dataset(uri: str, split: str | None = "test", categories=None,
                 storage_options: dict | None = None) -> list[Sample]:
    """Manifest if ``uri`` ends like one, VisA if root/split_csv/1cls.csv exists, else MVTec."""
    if uri.lower().endswith(MANIFEST_EXTENSIONS):
        return read_manifest(uri, split, categories, storage_options)
    fs, base = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if fs.exists(join_uri(base, VISA_CSV)):
        return read_visa(uri, split, categories, storage_options)
    samples = read_mvtec(uri, split, categories, storage_options)
    if not samples:
        raise DatasetError(f"no images found in {uri} as an MVTec tree (<cat>/{split or '*'}/"
                         f"<defect>/*.png), VisA ({VISA_CSV}) or manifest "
                         f"({', '.join(MANIFEST_EXTENSIONS)}); categories={categories}")
    return samples
