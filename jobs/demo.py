"""`vip2scan demo`: the whole product offline in a few minutes.

generate a lake (some defective, a few broken files) -> train the tiny head briefly ->
save a checkpoint -> scan -> report -> print where to look. Everything lands in one
directory (default ./demo-out) so it is easy to inspect and to delete.
"""

from __future__ import annotations

import shlex
import shutil
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vip2scan.jobs.config import ConfigOption
from vip2scan.jobs.errors import UsageError

EXAMPLE = "Example: vip2scan demo --dir /tmp/vip2scan-demo --images 200"

DEFAULT_DIR = "demo-out"
DEFAULT_IMAGES = 240
MARKER = ".vip2scan-demo"  # marks a directory the demo may wipe and rewrite
TRAIN_BATCH = 8
TRAIN_SEED = 111  # the spec's training seed


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


def training_batch(step: int, size: int) -> dict[str, Any]:
    """A fresh MVTec-style batch: half normal, half with one of each defect type."""
    import numpy as np
    import torch

    from vip2scan.model.data.synthetic import CATEGORIES, DEFECT_TYPES, make_sample

    images, masks, labels = [], [], []
    for i in range(TRAIN_BATCH):
        index = step * TRAIN_BATCH + i
        defect = None if i % 2 == 0 else DEFECT_TYPES[(index // 2) % len(DEFECT_TYPES)]
        # Seeds far from the lake's so the head never trains on a lake image.
        image, mask = make_sample(CATEGORIES[index % len(CATEGORIES)], defect, size=size, seed=1_000_000 + index)
        images.append(image)
        masks.append(mask)
        labels.append(int(defect is not None))
    return {
        "image": torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        "mask": torch.from_numpy(np.stack(masks) > 0).float(),
        "label": torch.tensor(labels, dtype=torch.long),
    }


def train_head(checkpoint: str, steps: int, max_seconds: float) -> str:
    """Train the tiny model's head for ``steps`` steps (or until ``max_seconds``) and save it."""
    import torch

    from vip2scan.model.config import DetectorConfig
    from vip2scan.model.detector import Detector
    from vip2scan.model.training.step import make_optimizer, train_step

    torch.manual_seed(TRAIN_SEED)
    detector = Detector.from_config(DetectorConfig(backbone="vip2-tiny"))
    optimizer = make_optimizer(detector)
    started = time.monotonic()
    for step in range(steps):
        losses = train_step(detector, training_batch(step, detector.image_size), optimizer)
        if step % 10 == 0 or step == steps - 1:
            typer.echo(f"  step {step + 1:3d}/{steps}  loss {losses['loss']:.4f}")
        if time.monotonic() - started > max_seconds:
            typer.echo(f"  stopped after {step + 1} steps (--train-seconds {max_seconds:g})")
            break
    detector.eval()
    return detector.save_checkpoint(checkpoint)


def lake_auroc(out: str, run_id: str, truth: list[dict]) -> Optional[float]:
    """Image AUROC of this run against the generator's labels (None if one class is missing)."""
    from vip2scan.pipeline.output.views import Outputs
    from vip2scan.model.metrics import image_auroc
    from vip2scan.pipeline.storage.location import normalise_uri

    rows = Outputs(out).connect().sql(
        "SELECT image_uri, image_score FROM scores WHERE run_id = ? AND status = 'ok'", params=[run_id]).fetchall()
    score_of = {normalise_uri(uri): score for uri, score in rows}
    pairs = [(t["label"], score_of[normalise_uri(t["image_uri"])]) for t in truth
             if normalise_uri(t["image_uri"]) in score_of]
    labels = [label for label, _ in pairs]
    if not pairs or len(set(labels)) < 2:
        return None
    return float(image_auroc(labels, [score for _, score in pairs]))


def demo(
    dir: Annotated[str, typer.Option("--dir", help="Where the lake, checkpoint, outputs and report go.")] = DEFAULT_DIR,
    images: Annotated[int, typer.Option("--images", min=8, help="Images in the generated lake.")] = DEFAULT_IMAGES,
    train_steps: Annotated[int, typer.Option(min=1, help="Training steps of the tiny head (batch 8).")] = 40,
    train_seconds: Annotated[float, typer.Option(help="Stop training after this many seconds.")] = 60.0,
    top: Annotated[int, typer.Option(help="Images shown in the report.")] = 12,
    checkpoint: Annotated[Optional[str], typer.Option(
        "--checkpoint", help="Scan with this checkpoint instead of training one (e.g. a longer-trained tiny head).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run the whole product offline: generate a lake, train briefly, scan, report."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from vip2scan.jobs.formatting import format_summary
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
    truth = write_lake(lake, images, defect_fraction=0.2, seed=0)
    for name, data in broken_files().items():
        (root / "lake" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "lake" / name).write_bytes(data)
    pacsv.write_csv(pa.Table.from_pylist(truth), str(root / "lake_labels.csv"))

    if checkpoint is None:
        checkpoint = str(root / "checkpoint")
        typer.echo(f"[2/4] training the vip2-tiny head for up to {train_steps} steps "
                   f"({train_seconds:g} s at most) on generated MVTec-style samples")
        model_id = train_head(checkpoint, train_steps, train_seconds)
        typer.echo(f"  checkpoint {checkpoint} (model_id {model_id})")
    else:
        typer.echo(f"[2/4] using the checkpoint {checkpoint} (no training)")

    typer.echo("[3/4] scanning the lake")
    terminal = Terminal()
    bar = ProgressBar(True, terminal)
    try:
        # The product's engine (Ray Data), even though `scan --engine auto` would pick the
        # local one for a lake this small: the demo shows the real pipeline.
        summary = scan(lake, out, checkpoint, ScanOptions(engine="ray", progress=bar, notify=terminal.say))
    finally:
        bar.close()
        terminal.close()
    typer.echo(format_summary(summary, out, {}))

    typer.echo("[4/4] writing the report")
    report_uri = build_report(out, summary.run_id, top, {})
    auroc = lake_auroc(out, summary.run_id, truth)

    typer.echo("")
    typer.echo(f"demo finished in {time.monotonic() - started:.0f} s")
    if auroc is not None:
        typer.echo(f"  image AUROC against the generator's labels ({root / 'lake_labels.csv'}): {auroc:.3f}")
    typer.echo(f"  report:  {report_uri}")
    typer.echo(f"  scores:  {out}/{layout.SCORES}/   maps: {out}/{layout.MAPS}/   "
               f"run records: {out}/{layout.RUNS}/")
    q = shlex.quote
    typer.echo("  try:")
    typer.echo(f"    vip2scan query {q(out)} "
               f"{q('SELECT image_uri, image_score FROM latest ORDER BY image_score DESC LIMIT 10')}")
    typer.echo(f"    vip2scan scan {q(lake)} --out {q(out)} --checkpoint {q(checkpoint)}   "
               "# again: nothing new, finishes at once")


def register(app: typer.Typer) -> None:
    app.command("demo", epilog=EXAMPLE)(demo)
