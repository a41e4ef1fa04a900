"""`vip2scan demo`: the whole product offline in about a minute.

generate a lake (some defective, a few broken files, the defects' masks kept aside) -> scan
it with the embedded checkpoint (``--checkpoint embedded``: a small CLIP trained here on
generated images, with its thresholds set on labelled generated data) -> report + explorer
-> measure the scan against the generator's labels and masks -> print where to look.
Everything lands in one directory (default ./demo-out) so it is easy to inspect and delete.
"""

from __future__ import annotations

import shlex
import shutil
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from vip2scan.jobs.config import ConfigOption
from vip2scan.jobs.errors import UsageError

EXAMPLE = "Example: vip2scan demo --dir /tmp/vip2scan-demo --images 200"

DEFAULT_DIR = "demo-out"
DEFAULT_IMAGES = 240
MARKER = ".vip2scan-demo"  # marks a directory the demo may wipe and rewrite
DEFAULT_CHECKPOINT = "embedded"


def broken_files() -> dict[str, bytes]:
    """Files a real lake contains that are not usable images; each must become an error row."""
    from vip2scan.model.data.synthetic import encode_png, make_sample

    image, _ = make_sample("disc", None, size=64, seed=7)
    png = encode_png(image)
    return {
        "broken/truncated.png": png[: len(png) // 2],
        "broken/empty.png": b"",
        "broken/not_an_image.jpg": b"this is a text file with an image suffix\n",
        "broken/random_bytes.tif": bytes(range(256)) * 8,
    }


def prepare_dir(root: Path) -> None:
    """Refuse to wipe a directory the demo did not create; otherwise start from scratch."""
    if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
        raise UsageError(f"{root} exists and was not made by the demo; choose another --dir")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / MARKER).write_text("created by `vip2scan demo`; safe to delete\n")


def model_grid(checkpoint: str) -> tuple[int, int]:
    """(patch size, input size) of the checkpoint's model."""
    from vip2scan.model.factory import ModelSpec, load_detector

    config = load_detector(ModelSpec(checkpoint)).config
    return int(getattr(config, "patch_size", None) or 1), int(config.image_size)


def lake_quality(out: str, run_id: str, truth: list[dict], checkpoint: str) -> dict[str, Optional[float]]:
    """This run against the generator: image AUROC (labels), and from the maps read back at each
    image's own size, pixel AUROC, AUPRO and how often a defective image's map peaks on its
    defect (within half a patch, :mod:`vip2scan.model.metrics.peaks`). None where a class is
    missing (a lake too small to have both)."""
    import numpy as np
    from PIL import Image

    from vip2scan.model.metrics import aupro, image_auroc, pixel_auroc
    from vip2scan.model.metrics.peaks import half_patch_reach, peak_on_defect
    from vip2scan.pipeline.output.views import Outputs, read_map
    from vip2scan.pipeline.storage.location import normalise_uri

    rows = Outputs(out).connect().sql(
        "SELECT image_uri, image_score, map_store, map_index, width, height FROM scores "
        "WHERE run_id = ? AND status = 'ok'", params=[run_id]).fetchall()
    row_of = {normalise_uri(r[0]): r for r in rows}
    scored = [(t, row_of[normalise_uri(t["image_uri"])]) for t in truth if normalise_uri(t["image_uri"]) in row_of]
    labels = [t["label"] for t, _ in scored]
    quality: dict[str, Optional[float]] = {"image_auroc": None, "pixel_auroc": None, "aupro": None,
                                           "peak_on_defect": None}
    if len(set(labels)) == 2:
        quality["image_auroc"] = float(image_auroc(labels, [r[1] for _, r in scored]))
    with_maps = [(t, r) for t, r in scored if r[2] is not None and (not t["label"] or t.get("mask_uri"))]
    masks, maps = [], []
    for t, r in with_maps:
        amap = read_map({"map_store": r[2], "map_index": r[3], "width": r[4], "height": r[5]}, out)
        mask = (np.zeros(amap.shape, bool) if not t["label"]
                else np.asarray(Image.open(t["mask_uri"])) > 127)
        masks.append(mask)
        maps.append(amap)
    if masks and any(m.any() for m in masks):
        quality["pixel_auroc"] = float(pixel_auroc(np.stack(masks), np.stack(maps)))
        quality["aupro"] = float(aupro(np.stack(masks), np.stack(maps)))
        patch, size = model_grid(checkpoint)
        peaks = [peak_on_defect(m, a, half_patch_reach(patch, size, *m.shape))
                 for m, a in zip(masks, maps) if m.any()]
        quality["peak_on_defect"] = float(np.mean(peaks))
    return quality


def demo(
    dir: Annotated[str, typer.Option("--dir", help="Where the lake, outputs and report go.")] = DEFAULT_DIR,
    images: Annotated[int, typer.Option("--images", min=8, help="Images in the generated lake.")] = DEFAULT_IMAGES,
    top: Annotated[int, typer.Option(help="Images shown in the report.")] = 12,
    checkpoint: Annotated[str, typer.Option(
        "--checkpoint", help="Scan with this checkpoint (default: the embedded one shipped with vip2scan).")
    ] = DEFAULT_CHECKPOINT,
    config: ConfigOption = None,
) -> None:
    """Run the whole product offline: generate a lake, scan it with the embedded model, report."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from vip2scan.jobs.explorer_page import build_explorer
    from vip2scan.jobs.formatting import cli_command, format_summary
    from vip2scan.jobs.progress import ProgressBar, Terminal
    from vip2scan.jobs.report_page import build_report
    from vip2scan.model.data.synthetic import write_lake
    from vip2scan.pipeline import ScanOptions, scan
    from vip2scan.pipeline.output import paths as layout

    started = time.monotonic()
    root = Path(dir).resolve()
    prepare_dir(root)
    lake, out = str(root / "lake"), str(root / "out")

    typer.echo(f"[1/4] generating {images} images (about 20% with defects) + 4 broken files in {lake}")
    truth = write_lake(lake, images, defect_fraction=0.2, seed=0, mask_root=str(root / "lake_masks"))
    for name, data in broken_files().items():
        (root / "lake" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "lake" / name).write_bytes(data)
    pacsv.write_csv(pa.Table.from_pylist(truth), str(root / "lake_labels.csv"))

    typer.echo(f"[2/4] scanning the lake with --checkpoint {checkpoint}")
    if checkpoint == DEFAULT_CHECKPOINT:
        typer.echo("  the embedded model: a small CLIP trained on generated images, not real CLIP weights;"
                   " its thresholds were set on labelled generated images")
    # The demo writes no checkpoint: every run scans with the same one (the same model id), so
    # an OUT scanned before is never rescored by a checkpoint swapped underneath it.
    typer.echo(f"  the demo writes no checkpoint of its own: every demo run scans with {checkpoint} "
               "as it is, the same model id each time")
    terminal = Terminal()
    bar = ProgressBar(True, terminal)
    try:
        # The product's engine (Ray Data), even though `scan --engine auto` would pick the
        # local one for a lake this small: the demo shows the real pipeline.
        summary = scan(lake, out, checkpoint, ScanOptions(engine="ray", progress=bar, notify=terminal.say))
    finally:
        bar.close()
        terminal.close()
    program = cli_command()  # the printed commands work pasted from this directory
    typer.echo(format_summary(summary, out, {}, program))

    typer.echo("[3/4] writing the report and the explorer")
    report_uri = build_report(out, summary.run_id, top, {})
    explorer_uri, _, _ = build_explorer(out, {}, max_images=200)

    typer.echo("[4/4] measuring the scan against the generator's labels and masks")
    quality = lake_quality(out, summary.run_id, truth, checkpoint)
    typer.echo("")
    typer.echo(f"demo finished in {time.monotonic() - started:.0f} s")
    shown = {"image AUROC": quality["image_auroc"], "pixel AUROC": quality["pixel_auroc"],
             "AUPRO": quality["aupro"], "maps peaking on the defect": quality["peak_on_defect"]}
    typer.echo("  against the generator's labels and masks (" + str(root / "lake_labels.csv") + "): " +
               ", ".join(f"{k} {v:.3f}" for k, v in shown.items() if v is not None))
    typer.echo(f"  report:    {report_uri}")
    typer.echo(f"  explorer:  {explorer_uri}")
    typer.echo(f"  scores:    {out}/{layout.SCORES}/   maps: {out}/{layout.MAPS}/   "
               f"run records: {out}/{layout.RUNS}/")
    q = shlex.quote
    typer.echo("  try (from this directory, as printed):")
    typer.echo(f"    {program} query {q(out)} "
               f"{q('SELECT image_uri, image_score FROM latest ORDER BY image_score DESC LIMIT 10')}")
    typer.echo(f"    {program} scan {q(lake)} --out {q(out)} --checkpoint {q(checkpoint)}   "
               "# again: nothing new, finishes at once")
    if program.endswith("/vip2scan"):
        typer.echo(f"  (or put vip2scan on PATH first: source {q(str(Path(program).parent / 'activate'))})")


def register(app: typer.Typer) -> None:
    app.command("demo", epilog=EXAMPLE)(demo)
