"""The lake explorer's files, written under OUT/reports/explorer/ (``vip2scan explore``, and
the demo): a static page, its data in ``.js`` wrappers and pre-rendered pictures.

Plain files (HTML, JavaScript, CSS, JSON data in ``.js`` wrappers, PNGs): no server, no CDN,
no network; copy the folder anywhere and open ``index.html``. Its size is bounded whatever the
lake's: the overview is aggregates (explore_aggregates.py), the table a bounded set of objects
(explore_tableset.py). A night's build rewrites only the files whose bytes changed
(explore_write.py). Pictures are pre-rendered for a bounded set (the most anomalous images and
a stable sample of the rest), named after the object and its run so a rendering is reused;
every object, with pictures on demand: ``vip2scan explore OUT --serve``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
import typer

from vip2scan.jobs.storage import read_object
from vip2scan.jobs.terminal import printable

if TYPE_CHECKING:
    from vip2scan.jobs.explore_tableset import TableSet
    from vip2scan.pipeline.output.views import Outputs

EXPLORER_DIR = "explorer"  # below OUT/reports/
STATIC_FILES = ("index.html", "explorer.js", "explorer.css")
EXPORT_MEMORY = "1GB"  # DuckDB's memory_limit for the export ($VIP2SCAN_DUCKDB_MEMORY overrides it)


@dataclass
class Built:
    uri: str
    objects: int
    table_rows: int
    rendered: int
    written: int
    deleted: int


def static_file(name: str) -> bytes:
    """One of the page's fixed files, shipped as package data next to this module."""
    return resources.files("vip2scan.jobs").joinpath("explorer_static", name).read_bytes()


def script(call: str, *args: Any) -> bytes:
    """A data file: JSON handed to a function of the page (``file://`` pages cannot fetch)."""
    body = ",".join(json.dumps(a, separators=(",", ":"), allow_nan=False) for a in args)
    return f"V2S.{call}({body});\n".encode()


def picture_name(uri: str, run_id: str) -> str:
    """The base name of an object's pictures: the same while its row is the same."""
    from vip2scan.jobs.explore_write import digest

    return digest(f"{uri}\0{run_id}".encode("utf-8", "surrogatepass"))[:20]


def pick_rendered(table: "TableSet", max_images: int) -> list[int]:
    """Rows of the table set to pre-render: the most anomalous half of ``max_images`` (by
    score), then the rows of smallest URI hash (a sample that stays put night to night);
    rows without a map are never picked."""
    from vip2scan.jobs.explore_write import digest

    rows = table.rows
    has_map = np.asarray([c < 2 and m is not None and i is not None for c, m, i in zip(
        rows.column("cls").to_pylist(), rows.column("map_store").to_pylist(),
        rows.column("map_index").to_pylist())], dtype=bool)
    candidates = np.flatnonzero(has_map)
    if max_images <= 0 or len(candidates) == 0:
        return []
    scores = np.nan_to_num(np.asarray(rows.column("score").to_numpy(zero_copy_only=False),
                                      dtype=np.float64)[candidates], nan=-np.inf)
    by_score = candidates[np.argsort(-scores, kind="stable")]
    top = by_score[: (max_images + 1) // 2]
    uris = rows.column("image_uri").to_pylist()
    rest = sorted(np.setdiff1d(candidates, top).tolist(), key=lambda i: digest(uris[i].encode("utf-8", "surrogatepass")))
    return sorted(int(i) for i in np.concatenate([top, rest[: max_images - len(top)]]).astype(int))


def render_picture(outputs: "Outputs", uri: str, width: int, height: int, amap: np.ndarray,
                   value_range: tuple[float, float]) -> tuple[bytes | None, bytes, dict[str, Any]]:
    """(image PNG or None when unreadable now, heat map PNG, rendering info for the page)."""
    from vip2scan.jobs.imaging import (DETAIL_SIDE, fit_size, heat_image, peak_position, png_bytes,
                                       raised_to_peak, upright_thumbnail)
    from vip2scan.model.images import DecodeError

    try:
        data = read_object(uri, outputs.storage_options)
        image = upright_thumbnail(data, width, height, DETAIL_SIDE) if data is not None else None
    except DecodeError:  # changed since it was scored into something unreadable
        image = None
    size = image.size if image is not None else fit_size(width, height, DETAIL_SIDE)
    low, high = raised_to_peak(value_range, amap)
    x, y = peak_position(amap)
    info = {"img": image is not None, "w": size[0], "h": size[1], "x": round(x, 4), "y": round(y, 4),
            "lo": round(low, 6), "hi": round(high, 6), "peak": round(float(np.nanmax(amap)), 6)}
    return (png_bytes(image) if image is not None else None), png_bytes(heat_image(amap, size, (low, high))), info


def render(outputs: "Outputs", table: "TableSet", picked: list[int], writer: Any, renders: dict) -> dict[str, str]:
    """PNGs of the picked rows (``img/NAME.png``, ``img/NAME-map.png``); a picture the last
    build made for the same row is kept as it is. Fills ``table.rendered`` and ``renders``
    (NAME -> rendering info); returns URI -> NAME of every rendered row."""
    from vip2scan.jobs.imaging import display_range
    from vip2scan.pipeline.output.map_store import read_map_array

    rows = table.rows
    col = {name: rows.column(name).to_pylist() for name in
           ("image_uri", "run_id", "map_store", "map_index", "width", "height")}
    names: dict[str, str] = {}
    fresh: dict[int, np.ndarray] = {}
    for i in picked:
        uri, name = col["image_uri"][i], picture_name(col["image_uri"][i], col["run_id"][i])
        old = renders.get(name)
        if old is not None and writer.has(f"img/{name}-map.png") and (not old["img"] or writer.has(f"img/{name}.png")):
            for file in ([f"img/{name}.png"] if old["img"] else []) + [f"img/{name}-map.png"]:
                writer.keep(file)
            table.rendered[uri], names[uri] = {**old, "name": name}, name
            continue
        amap = read_map_array(outputs.location, str(col["map_store"][i]), int(col["map_index"][i]))
        if not np.isnan(amap).all():
            fresh[i] = amap.astype(np.float16)  # kept for the run's stretch; half the memory
    runs = col["run_id"]
    ranges = {run: display_range([m for i, m in fresh.items() if runs[i] == run]) for run in {runs[i] for i in fresh}}
    for i, amap in fresh.items():
        uri, name = col["image_uri"][i], picture_name(col["image_uri"][i], runs[i])
        image, heat, info = render_picture(outputs, uri, int(col["width"][i]), int(col["height"][i]),
                                           amap, ranges[runs[i]])
        if image is not None:
            writer.write(f"img/{name}.png", image)
        writer.write(f"img/{name}-map.png", heat)
        renders[name] = info
        table.rendered[uri], names[uri] = {**info, "name": name}, name
    return names


def export_explorer(out: str, storage_options: dict, max_images: int, table_rows: int) -> Built:
    """Write (incrementally) OUT/reports/explorer/."""
    from vip2scan.jobs.explore_aggregates import gather_meta
    from vip2scan.jobs.explore_data import OTHER_ROWS_SQL, open_current, read_lake
    from vip2scan.jobs.explore_tableset import chunks, select_table_set, table_index
    from vip2scan.jobs.explore_write import FolderWriter, fingerprint
    from vip2scan.jobs.imaging import PEAK_RULE, SCALING_RULE, colour_stops
    from vip2scan.pipeline.deadline import step
    from vip2scan.pipeline.output.paths import REPORTS
    from vip2scan.pipeline.output.views import MEMORY_ENV, Outputs

    outputs = Outputs(out, storage_options)
    outputs.require_exists()
    folder = outputs.path(REPORTS, EXPLORER_DIR)
    writer = FolderWriter(outputs.fs, folder)
    index_uri = outputs.uri(REPORTS, EXPLORER_DIR, "index.html")
    code = b"".join(static_file(name) for name in STATIC_FILES)
    build = fingerprint(outputs.run_records(), {"max_images": max_images, "table_rows": table_rows,
                                                "out": outputs.location.display()}, code)
    if writer.unchanged(build):  # a quiet night: nothing to read, nothing to write
        last = writer.previous
        return Built(index_uri, last["objects"], last["table_rows"], last["rendered"], 0, 0)
    lake = read_lake(outputs)
    for line in lake.warnings:
        typer.echo(printable(f"warning: {line}"), err=True)
    # Bounded: above it DuckDB spills to disk (the target is 2 GiB for the whole command at 10 M).
    con = outputs.connect(os.environ.get(MEMORY_ENV) or EXPORT_MEMORY)
    try:
        with step("reading the lake's state"):
            open_current(con, lake, outputs)
            con.execute(OTHER_ROWS_SQL)
            meta = gather_meta(outputs, con, lake)
            table = select_table_set(con, lake, table_rows, len(meta["prefixes"]))
    finally:
        con.close()
    renders = dict(writer.previous.get("renders") or {})
    with step("rendering pictures"):
        pictures = render(outputs, table, pick_rendered(table, max_images), writer, renders)
    meta.update({
        "scaling": f"{SCALING_RULE}; {PEAK_RULE}", "colours": colour_stops(), "rendered": len(pictures),
        "max_images": max_images, "generated_by": "vip2scan explore", "table_rows": table.rows.num_rows,
        "table_limit": table_rows, "subset": table.subset, "buckets": table.buckets})
    for name in STATIC_FILES:
        writer.write(name, static_file(name))
    writer.write("data/meta.js", script("setMeta", meta))
    writer.write("data/index.js", script("setIndex", table_index(table, meta, pictures)))
    for b, details in chunks(table, lake).items():
        writer.write(f"data/obj-{b:05d}.js", script("setChunk", b, details))
    writer.finish({"fingerprint": build, "objects": meta["n_rows"], "table_rows": table.rows.num_rows,
                   "rendered": len(pictures), "renders": {n: renders[n] for n in sorted(set(pictures.values()))}})
    return Built(index_uri, meta["n_rows"], table.rows.num_rows, len(pictures), writer.written, writer.deleted)


def build_explorer(out: str, storage_options: dict, max_images: int) -> tuple[str, int, int]:
    """Write OUT/reports/explorer/; return (URI of its index.html, objects, images rendered)."""
    from vip2scan.jobs.explore_tableset import DEFAULT_TABLE_ROWS

    built = export_explorer(out, storage_options, max_images, DEFAULT_TABLE_ROWS)
    return built.uri, built.objects, built.rendered
