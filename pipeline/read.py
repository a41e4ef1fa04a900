"""Reading results back: committed score rows and anomaly maps at the image's own size."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .sinks import read_map_array
from .state import STATUS_COMPLETE, list_records
from .storage import Location, normalise_uri


def committed_score_files(out: Location) -> list[str]:
    """Score files of complete runs (relative to OUT); half-committed runs are not included."""
    return [f for r in list_records(out) if r.get("status") == STATUS_COMPLETE
            for f in r.get("files", [])]


def read_scores(out: str, storage_options: Mapping[str, Any] | None = None,
                filter: Any = None, columns: list[str] | None = None) -> pa.Table:
    """All committed score rows (optionally a pyarrow filter expression / column subset)."""
    import pyarrow.dataset as pads

    from .sinks import SCORES_SCHEMA

    loc = Location.of(out, storage_options)
    files = committed_score_files(loc)
    if not files:
        return SCORES_SCHEMA.empty_table()
    dataset = pads.dataset([loc.fs_path(f) for f in files], format="parquet",
                           filesystem=loc.pyarrow_filesystem(), schema=SCORES_SCHEMA)
    return dataset.to_table(filter=filter, columns=columns)


def _row_fields(row: Any) -> dict[str, Any]:
    if isinstance(row, Mapping):
        return dict(row)
    if hasattr(row, "_asdict"):  # namedtuple, e.g. from DataFrame.itertuples()
        return dict(row._asdict())
    if hasattr(row, "to_dict"):  # pandas Series
        return dict(row.to_dict())
    raise TypeError(f"expected a scores row (mapping) or an image URI, got {type(row).__name__}")


def _latest_ok_row(loc: Location, image_uri: str) -> dict[str, Any]:
    table = read_scores(loc.uri, loc.storage_options,
                        filter=(pc.field("image_uri") == image_uri) & (pc.field("status") == "ok"),
                        columns=["map_store", "map_index", "width", "height", "scanned_at"])
    table = table.filter(pc.is_valid(table["map_store"]))
    if table.num_rows == 0:
        raise KeyError(f"no scored row with a map for {image_uri}")
    latest = int(pc.index(table["scanned_at"], pc.max(table["scanned_at"])).as_py())
    return table.slice(latest, 1).to_pylist()[0]


def resize_map(amap: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a float map to (height, width), float32 in [0, 1]."""
    from PIL import Image

    if amap.shape == (height, width):
        return amap.astype(np.float32)
    image = Image.fromarray(np.asarray(amap, dtype=np.float32), mode="F")
    resized = np.asarray(image.resize((int(width), int(height)), Image.BILINEAR), dtype=np.float32)
    return np.clip(resized, 0.0, 1.0)


def read_map(row_or_uri: Any, out: str, storage_options: Mapping[str, Any] | None = None
             ) -> np.ndarray:
    """The anomaly map of a scored image, resized back to its original width x height.

    ``row_or_uri``: a scores row (mapping, namedtuple or pandas Series with ``map_store``,
    ``map_index``, ``width``, ``height``) or an ``image_uri``, in which case the newest ``ok``
    row of that image in the committed runs under ``out`` is used. Returns float32
    [height, width] in [0, 1].
    """
    loc = Location.of(out, storage_options)
    if isinstance(row_or_uri, str):
        row = _latest_ok_row(loc, normalise_uri(row_or_uri) if "://" not in row_or_uri
                             else row_or_uri)
    else:
        row = _row_fields(row_or_uri)
    store, index = row.get("map_store"), row.get("map_index")
    if store is None or index is None or (isinstance(index, float) and np.isnan(index)):
        raise KeyError("this row has no map (status 'error' or a scan without maps)")
    amap = read_map_array(loc, str(store), int(index))
    if np.isnan(amap).any():
        raise KeyError(f"map {store}[{int(index)}] was never written")
    return resize_map(amap, int(row["width"]), int(row["height"]))
