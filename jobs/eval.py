"""`vip2scan eval DATA --checkpoint CKPT`: the paper's metrics per category and their mean.

The inference pass runs locally in batches, or on Ray Data with --ray (decoding in CPU
tasks, scoring in an actor pool); either way the scored batches reach
:class:`vip2scan.model.training.evaluation.EvalAccumulator` grouped by category, so exact mode
holds one category's maps at a time and streaming mode a fixed-size histogram.
--calibrate writes the F1-max image and pixel thresholds into the checkpoint's config,
which scan then uses as its defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from typing import Annotated, Any, Iterator, Optional

import numpy as np
import typer

from vip2scan.jobs.config import ConfigOption, storage_options_from_flags
from vip2scan.jobs.errors import UsageError

EXAMPLE = ("Examples: vip2scan eval data/mvtec --checkpoint ckpt/run1 --json metrics.json ; "
           "vip2scan eval s3://bucket/visa --checkpoint ckpt/visa --ray --actors 4 --gpus-per-actor 1 --calibrate")

COLUMNS = (  # (key, header); metrics are printed in percent like the paper's tables
    ("category", "category"), ("n_images", "images"), ("n_anomalous", "anomalous"),
    ("image_auroc", "img AUROC"), ("image_ap", "img AP"), ("image_f1_max", "img F1"),
    ("pixel_auroc", "px AUROC"), ("pixel_aupro", "AUPRO"), ("pixel_f1_max", "px F1"),
)


def format_table(rows: list[dict]) -> str:
    def cell(key: str, value: Any) -> str:
        if isinstance(value, str):
            return value
        if key.startswith("n_"):
            return str(int(value))
        return "-" if value is None or not math.isfinite(value) else f"{100 * value + 0.0:.1f}"  # no "-0.0"

    body = [[cell(k, r.get(k)) for k, _ in COLUMNS] for r in rows]
    header = [h for _, h in COLUMNS]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths)))
             for line in [header, *body]]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))  # rule above the mean row
    return "\n".join(lines)


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_json(uri: str, payload: dict, storage_options: dict | None) -> None:
    from vip2scan.model.files import write_bytes

    clean = json.loads(json.dumps(payload, default=str), parse_constant=lambda _: None)
    clean["rows"] = [{k: _finite_or_none(v) for k, v in r.items()} for r in payload["rows"]]
    write_bytes(uri, (json.dumps(clean, indent=2) + "\n").encode(), storage_options)


def write_parquet(uri: str, rows: list[dict], meta: dict, storage_options: dict | None) -> None:
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{k: _finite_or_none(v) for k, v in r.items()} for r in rows])
    table = table.replace_schema_metadata({"vip2scan.eval": json.dumps(meta, default=str)})
    with fsspec.open(uri, "wb", **(storage_options or {})) as f:
        pq.write_table(table, f)


# ------------------------------------------------------------------ Ray Data pass
class _Scorer:
    """Ray Data actor: one detector per actor, scores decoded batches."""

    def __init__(self, model_spec: Any, storage_options: dict | None, use_gpu: bool):
        import torch

        from vip2scan.model.factory import load_detector

        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.detector = load_detector(model_spec, device, storage_options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from vip2scan.model.training.evaluation import score_batch

        with torch.inference_mode():
            return score_batch(self.detector, batch)


def _load_batch(batch: dict[str, np.ndarray], size: int, storage_options: dict | None,
                threads: int) -> dict[str, np.ndarray]:
    from vip2scan.model.training.evaluation import load_eval_batch

    records = [dict(zip(batch, values)) for values in zip(*batch.values())]
    return load_eval_batch(records, size, storage_options, threads)


def ray_scored_batches(records: list[dict], model_spec: Any, image_size: int,
                       batch_size: int, actors: int, gpus_per_actor: float, threads: int,
                       storage_options: dict | None, ray_address: str | None) -> Iterator[dict]:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    if not ray.is_initialized():
        ray.init(address=ray_address, configure_logging=False)
    # Categories must arrive one after another (exact metrics free each category's maps).
    DataContext.get_current().execution_options.preserve_order = True
    ds = ray.data.from_items(records)
    ds = ds.map_batches(_load_batch, batch_size=batch_size, batch_format="numpy",
                        fn_kwargs={"size": image_size, "storage_options": storage_options, "threads": threads})
    ds = ds.map_batches(_Scorer, batch_size=batch_size, batch_format="numpy", num_gpus=gpus_per_actor or None,
                        compute=ActorPoolStrategy(min_size=1, max_size=max(1, actors),
                                                  max_tasks_in_flight_per_actor=2),
                        fn_constructor_kwargs={"model_spec": model_spec,
                                               "storage_options": storage_options,
                                               "use_gpu": gpus_per_actor > 0})
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


# ------------------------------------------------------------------ the command
def evaluate(
    data: Annotated[str, typer.Argument(help="MVTec-style root, VisA root or a manifest (CSV/JSONL/Parquet).")],
    checkpoint: Annotated[str, typer.Option(
        "--checkpoint", envvar="VIP2SCAN_CHECKPOINT",
        help="Checkpoint dir, a training output root (follows its 'latest'), or a released .pth.")],
    categories: Annotated[Optional[str], typer.Option(help="Comma-separated categories (default all).")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Write the metrics as JSON (path or URI).")] = None,
    parquet_out: Annotated[Optional[str], typer.Option("--parquet", help="Write the table as Parquet.")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="Run the inference pass on Ray Data.")] = False,
    actors: Annotated[int, typer.Option(min=1, help="With --ray: most scoring actors.")] = 2,
    gpus_per_actor: Annotated[float, typer.Option(min=0.0, help="With --ray: GPUs per scoring actor.")] = 0.0,
    streaming: Annotated[Optional[bool], typer.Option(
        "--streaming/--exact", help="Pixel metrics from fixed-bin histograms (bounded memory) or exact; "
                                    "default: exact unless a category's maps exceed ~67 M pixels.")] = None,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="Write the F1-max image and pixel thresholds into the checkpoint's config.")] = False,
    backbone: Annotated[Optional[str], typer.Option(help="Backbone of a released .pth (or override).")] = None,
    weights: Annotated[Optional[str], typer.Option(help="Backbone weights (safetensors path/URI or OpenCLIP tag).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input size of a released .pth (or override).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="Image decoding threads.")] = 4,
    device: Annotated[str, typer.Option(help="Local pass device: cpu, cuda, auto.")] = "auto",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address (with --ray).")] = None,
    storage_option: Annotated[Optional[list[str]], typer.Option(
        "--storage-option", "-s", metavar="KEY=VALUE", help="fsspec option for DATA, CKPT and outputs (repeatable).")] = None,
    config: ConfigOption = None,
) -> None:
    """Evaluate a checkpoint on labelled data: image and pixel metrics per category and mean."""
    import torch

    from vip2scan.model.checkpoint import save_thresholds
    from vip2scan.model.data.readers import read_dataset
    from vip2scan.model.embedded import embedded_checkpoint, is_embedded
    from vip2scan.model.factory import ModelSpec, load_detector
    from vip2scan.model.training import checkpoints, evaluation

    if calibrate and is_embedded(checkpoint):
        raise UsageError(f"--calibrate writes thresholds into the checkpoint, and the embedded one ships with "
                         f"vip2scan: copy {embedded_checkpoint()} to a folder of your own and calibrate that")
    so = storage_options_from_flags(storage_option) or None
    wanted = [c.strip() for c in categories.split(",") if c.strip()] if categories else None
    samples = read_dataset(data, split=split, categories=wanted, storage_options=so)
    if not samples:
        raise UsageError(f"no labelled images found in {data}" + (f" for {wanted}" if wanted else ""))
    records = evaluation.sort_by_category([dataclasses.asdict(s) for s in samples])
    ckpt = checkpoints.resolve_checkpoint(checkpoint, so)
    model_spec = ModelSpec(ckpt, backbone=backbone, weights=weights, image_size=image_size)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    detector = load_detector(model_spec, "cpu" if ray else device, so)
    mode = evaluation.choose_mode(records, detector.image_size, streaming)
    typer.echo(f"evaluating {ckpt} (model {detector.model_id}) on {len(records)} images from {data}; "
               f"{mode} metrics", err=True)
    if ray:
        batches = ray_scored_batches(records, model_spec, detector.image_size, batch_size, actors,
                                     gpus_per_actor, threads, so, ray_address)
    else:
        batches = evaluation.score_records(detector, records, batch_size, so, threads)
    accumulator = evaluation.EvalAccumulator(mode, calibrate)
    with typer.progressbar(length=len(records), label="scoring", file=sys.stderr) as bar, torch.inference_mode():
        for batch in batches:
            accumulator.update(batch)
            bar.update(len(batch["label"]))
    result = accumulator.result()
    typer.echo(format_table(result.rows))
    for note in result.notes:
        typer.echo(f"note: {note}")
    meta = {"data": data, "checkpoint": ckpt, "model_id": detector.model_id, "mode": result.mode,
            "n_images": result.n_images, "notes": result.notes}
    if calibrate:
        if result.image_threshold is None and result.pixel_threshold is None:
            raise UsageError("--calibrate needs anomalous images (and masks for the pixel threshold)")
        model_id = save_thresholds(ckpt, result.image_threshold, result.pixel_threshold, so)
        meta.update(image_threshold=result.image_threshold, pixel_threshold=result.pixel_threshold,
                    calibrated_model_id=model_id)
        typer.echo(f"calibrated {ckpt}: image threshold {result.image_threshold}, pixel threshold "
                   f"{result.pixel_threshold} (new model id {model_id}); scan uses them by default")
    if json_out:
        write_json(json_out, {**meta, "rows": result.rows}, so)
        typer.echo(f"wrote {json_out}")
    if parquet_out:
        write_parquet(parquet_out, result.rows, meta, so)
        typer.echo(f"wrote {parquet_out}")


evaluate.__doc__ = (evaluate.__doc__ or "") + "\n\n" + EXAMPLE


def register(app: typer.Typer) -> None:
    app.command("eval", help=evaluate.__doc__)(evaluate)
