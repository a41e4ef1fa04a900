"""The lake explorer's files, written under OUT/reports/explorer/ (``vip2scan explore``, and
the demo): a static page, its data in ``.js`` wrappers and pre-rendered pictures.

Plain files (HTML, JavaScript, CSS, JSON data in ``.js`` wrappers, PNGs): no server, no CDN,
no network; copy the folder anywhere and open ``index.html``. The page reads its data lazily
(see :mod:`vip2scan.jobs.explore_data`), so it stays quick with 100,000 objects. Pictures are
pre-rendered only for a bounded set (the most anomalous images and a seeded sample of the
rest); every other image's map is one ``vip2scan map OUT IMAGE_URI --png map.png`` away.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
import typer

from vip2scan.jobs.storage import read_object
from vip2scan.jobs.terminal import printable

if TYPE_CHECKING:
    from vip2scan.jobs.explore_data import LakeState
    from vip2scan.pipeline.output.views import Outputs

EXPLORER_DIR = "explorer"  # below OUT/reports/
STATIC_FILES = ("index.html", "explorer.js", "explorer.css")
SAMPLE_SEED = 0


def static_file(name: str) -> bytes:
    """One of the page's fixed files, shipped as package data next to this module."""
    return resources.files("vip2scan.jobs").joinpath("explorer_static", name).read_bytes()


def script(call: str, *args: Any) -> bytes:
    """A data file: JSON handed to a function of the page (``file://`` pages cannot fetch)."""
    body = ",".join(json.dumps(a, separators=(",", ":"), allow_nan=False) for a in args)
    return f"V2S.{call}({body});\n".encode()


def pick_rendered(state: "LakeState", max_images: int) -> list[int]:
    """Rows to pre-render: the most anomalous half of ``max_images`` (by score), then a
    seeded sample of the other scored rows; rows without a map are never picked."""
    rows = state.rows
    has_map = np.asarray([s == "ok" and m is not None and i is not None for s, m, i in zip(
        rows.column("status").to_pylist(), rows.column("map_store").to_pylist(),
        rows.column("map_index").to_pylist())], dtype=bool)
    candidates = np.flatnonzero(has_map)
    if max_images <= 0 or len(candidates) == 0:
        return []
    scores = np.nan_to_num(np.asarray(rows.column("image_score").to_numpy(zero_copy_only=False),
                                      dtype=np.float64)[candidates], nan=-np.inf)
    by_score = candidates[np.argsort(-scores, kind="stable")]
    top = by_score[: (max_images + 1) // 2]
    rest = np.setdiff1d(candidates, top)
    sample = np.random.default_rng(SAMPLE_SEED).permutation(rest)[: max_images - len(top)]
    return sorted(int(i) for i in np.concatenate([top, sample]))


def render(outputs: "Outputs", state: "LakeState", picked: list[int], write: Any) -> int:
    """PNGs of the picked rows (image, heat map) written through ``write(name, bytes)``; their
    rendering info goes into ``state.rendered``. Returns how many were rendered."""
    from vip2scan.jobs.imaging import (DETAIL_SIDE, display_range, fit_size, heat_image, peak_position,
                                       png_bytes, raised_to_peak, upright_thumbnail)
    from vip2scan.model.images import DecodeError
    from vip2scan.pipeline.output.map_store import read_map_array

    rows = state.rows
    maps: dict[int, np.ndarray] = {}
    for i in picked:
        amap = read_map_array(outputs.location, str(rows.column("map_store")[i].as_py()),
                              int(rows.column("map_index")[i].as_py()))
        if not np.isnan(amap).all():
            maps[i] = amap.astype(np.float16)  # kept for the run's stretch; half the memory
    runs = rows.column("run_id").to_pylist()
    ranges = {run: display_range([m for i, m in maps.items() if runs[i] == run])
              for run in {runs[i] for i in maps}}
    for i, amap in maps.items():
        uri = str(rows.column("image_uri")[i].as_py())
        width, height = int(rows.column("width")[i].as_py()), int(rows.column("height")[i].as_py())
        try:
            data = read_object(uri, outputs.storage_options)
            image = upright_thumbnail(data, width, height, DETAIL_SIDE) if data is not None else None
        except DecodeError:  # changed since it was scored into something unreadable
            image = None
        size = image.size if image is not None else fit_size(width, height, DETAIL_SIDE)
        if image is not None:
            write(f"img/{i}.png", png_bytes(image))
        low, high = raised_to_peak(ranges[runs[i]], amap)
        write(f"img/{i}-map.png", png_bytes(heat_image(amap, size, (low, high))))
        x, y = peak_position(amap)
        state.rendered[i] = {"img": image is not None, "w": size[0], "h": size[1],
                             "x": round(x, 4), "y": round(y, 4), "lo": round(low, 6),
                             "hi": round(high, 6), "peak": round(float(np.nanmax(amap)), 6)}
    return len(maps)


def build_explorer(out: str, storage_options: dict, max_images: int) -> tuple[str, int, int]:
    """Write OUT/reports/explorer/; return (URI of its index.html, objects, images rendered)."""
    from vip2scan.jobs.explore_data import FLAG_IMAGE, FLAG_RENDERED, gather
    from vip2scan.jobs.imaging import PEAK_RULE, SCALING_RULE, colour_stops
    from vip2scan.pipeline.output.paths import REPORTS
    from vip2scan.pipeline.output.views import Outputs

    from vip2scan.pipeline.deadline import step

    outputs = Outputs(out, storage_options)
    with step("reading the lake's state"):
        state = gather(outputs)
    for line in state.warnings:
        typer.echo(printable(f"warning: {line}"), err=True)
    fs = outputs.fs
    folder = outputs.path(REPORTS, EXPLORER_DIR)
    if fs.exists(folder):  # ours alone: a rebuild must not leave stale chunks or pictures
        fs.rm(folder, recursive=True)
    for sub in ("data", "img"):
        fs.makedirs(outputs.path(REPORTS, EXPLORER_DIR, sub), exist_ok=True)

    def write(name: str, data: bytes) -> None:
        fs.pipe(outputs.path(REPORTS, EXPLORER_DIR, name), data)

    picked = pick_rendered(state, max_images)
    with step("rendering pictures"):
        rendered = render(outputs, state, picked, write)
    for i, info in state.rendered.items():
        state.index["f"][i] |= FLAG_RENDERED | (FLAG_IMAGE if info["img"] else 0)
    state.meta.update({
        "scaling": f"{SCALING_RULE}; {PEAK_RULE}", "colours": colour_stops(), "rendered": rendered,
        "max_images": max_images, "generated_by": "vip2scan explore"})
    for name in STATIC_FILES:
        write(name, static_file(name))
    write("data/meta.js", script("setMeta", state.meta))
    write("data/index.js", script("setIndex", state.index))
    for k in range(state.n_chunks):
        write(f"data/chunk-{k:05d}.js", script("setChunk", k, state.chunk(k)))
    return outputs.uri(REPORTS, EXPLORER_DIR, "index.html"), state.rows.num_rows, rendered
