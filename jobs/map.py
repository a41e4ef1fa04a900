"""`vip2scan map OUT IMAGE_URI --png map.png`: one image's anomaly map, as a picture or numbers.

The map is the newest ``ok`` row's for that object (``read_map``), at the image's own width x
height. ``--png`` colours it by the explorer's rule (its own robust range; the range is
printed), ``--overlay`` blends it onto the image as scored, ``--npy`` keeps the float values.
"""

from __future__ import annotations

import io
from typing import Annotated, Optional

import typer

from vip2scan.jobs.config import ConfigOption, storage_options_from_flags
from vip2scan.jobs.errors import BadParameter, JobError
from vip2scan.jobs.storage import StorageOption, read_object, write_object
from vip2scan.jobs.terminal import printable

EXAMPLE = ("Example: vip2scan map s3://bucket/vip2scan-out s3://bucket/lake/line3/img_00042.png "
           "--png map.png --overlay")


def map_command(
    out: Annotated[str, typer.Argument(help="The scan's output location (path or URI).")],
    image_uri: Annotated[str, typer.Argument(help="The object, as in the image_uri column.")],
    png: Annotated[Optional[str], typer.Option("--png", metavar="FILE", help="Write the map coloured as a PNG here.")] = None,
    overlay: Annotated[bool, typer.Option(
        "--overlay", help="With --png: blend the map onto the image (needs the object).")] = False,
    npy: Annotated[Optional[str], typer.Option("--npy", metavar="FILE", help="Write the float32 map (numpy .npy) here.")] = None,
    value_range: Annotated[Optional[str], typer.Option(
        "--range", metavar="LO:HI",
        help="With --png: colour LO..HI (the explorer's colour bar under the map gives its range), "
             "not the map's own range.")] = None,
    storage_option: StorageOption = None,
    config: ConfigOption = None,
) -> None:
    """Fetch one image's anomaly map (newest scored row) and print where its maximum is."""
    import numpy as np

    from vip2scan.jobs.imaging import SCALING_RULE, display_range, heat_image, peak_position, png_bytes
    from vip2scan.pipeline import read_map

    storage_options = storage_options_from_flags(storage_option)
    chosen_range = parse_range(value_range)
    try:
        amap = read_map(image_uri, out, storage_options=storage_options)
    except KeyError as exc:  # no ok row with a map: the reason, in one line
        raise JobError(str(exc.args[0]) if exc.args else str(exc)) from None
    height, width = amap.shape
    x, y = peak_position(amap)
    typer.echo(f"map of {printable(image_uri)}: {width} x {height} px, values {float(amap.min()):.4f} to "
               f"{float(amap.max()):.4f}, maximum at x={int(x * width)} y={int(y * height)}")
    if npy:
        buffer = io.BytesIO()
        np.save(buffer, amap.astype(np.float32))
        write_object(buffer.getvalue(), npy, storage_options)
        typer.echo(f"wrote {npy}")
    if png:
        colours = chosen_range or display_range([amap])
        picture = heat_image(amap, (width, height), colours)
        if overlay:
            from PIL import Image

            from vip2scan.jobs.imaging import OVERLAY_ALPHA, upright_thumbnail

            data = read_object(image_uri, storage_options)
            if data is None:
                raise JobError(f"{printable(image_uri)} is gone: write the map alone (drop --overlay)")
            image = upright_thumbnail(data, width, height, max(width, height))
            picture = Image.blend(image, picture.resize(image.size), OVERLAY_ALPHA)
        write_object(png_bytes(picture), png, storage_options)
        rule = ("the range given by --range" if chosen_range else
                SCALING_RULE.replace("that run's rendered maps", "this map") +
                "; the explorer colours by the run's range: pass its colour bar's ends as --range LO:HI")
        typer.echo(f"wrote {png} (colours: {colours[0]:.4f} to {colours[1]:.4f}; {rule})")


def parse_range(value: Optional[str]) -> Optional[tuple[float, float]]:
    """``--range LO:HI`` -> (LO, HI); None when not given."""
    if value is None:
        return None
    low, sep, high = value.partition(":")
    try:
        if sep and float(low) < float(high):
            return float(low), float(high)
    except ValueError:
        pass
    raise BadParameter(f"expected LO:HI with LO < HI, got {value!r}", param_hint="'--range'")


def register(app: typer.Typer) -> None:
    app.command("map", epilog=EXAMPLE)(map_command)
