"""`vip2scan train DATA --out CKPT`: the ViP2-CLIP head on Ray Train (or in one process).

The epoch loop itself is :func:`vip2scan.model.training.loop.train_loop`; this module adds the
command line, a Ray Train session (ranks, gradient all-reduce, per-epoch reports) and
progress output. Ray Train keeps its run state under CKPT/_ray; our checkpoints are
CKPT/epoch_NNN, CKPT/latest and CKPT/best (see model/training/checkpoints.py).

Test hook: VIP2SCAN_FAULT_KILL_WORKER_AT_EPOCH=N makes rank 0 exit abruptly after its
first batch of epoch N, once per output (a marker file under CKPT/_ray records that it
fired), so tests can watch Ray Train restart the workers from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import time
from typing import Annotated, Any, Optional

import typer

from vip2scan.jobs.config import ConfigOption, storage_options_from_flags
from vip2scan.jobs.errors import JobError, UsageError

FAULT_ENV = "VIP2SCAN_FAULT_KILL_WORKER_AT_EPOCH"
FAULT_MARKER = "fault_hook_fired"
POINTER_FILE = "vip2scan_checkpoint.json"  # what a Ray Train checkpoint holds: which epoch dir
RAY_RUN_NAME = "_ray"  # RunConfig(storage_path=CKPT, name="_ray") -> state in CKPT/_ray

EXAMPLE = ("Examples: vip2scan train data/mvtec --out ckpt/run1 --workers 2 --epochs 10 ; "
           "vip2scan train s3://bucket/visa --out s3://bucket/ckpt --workers 4 --use-gpu "
           "--backbone ViT-L-14-336-quickgelu --weights weights/vit-l-14-336.safetensors --image-size 518")


# ------------------------------------------------------------------ progress output
def progress_line(p) -> str:
    """'epoch 2/10 [#######.......]  12/24 batches  loss 6.6123  18.5 img/s'."""
    width = 24
    filled = int(width * p.done / max(p.total, 1))
    rate = p.images / p.seconds if p.seconds > 0 else 0.0
    return (f"epoch {p.epoch}/{p.epochs} [{'#' * filled}{'.' * (width - filled)}] "
            f"{p.done:>4}/{p.total} batches  loss {p.loss:.4f}  {rate:.1f} img/s")


def epoch_line(m: dict) -> str:
    parts = [f"epoch {m['epoch']}", f"loss {m['loss']:.4f}",
             f"(focal {m.get('focal', math.nan):.4f}, dice {m.get('dice', math.nan):.4f}, "
             f"image_ce {m.get('image_ce', math.nan):.4f})", f"{m['images']} images",
             f"{m['train_seconds']:.1f} s"]
    if "val_score" in m:
        parts.append(f"val image AUROC {m['val_image_auroc']:.4f} pixel AUROC {m['val_pixel_auroc']:.4f}"
                     + (" (best)" if m.get("best") else ""))
    if m.get("checkpoint"):
        parts.append(f"-> {m['checkpoint']}")
    return "  ".join(parts)


class TerminalProgress:
    """The bar on ``stream`` (redrawn on a terminal; on a pipe or a Ray worker log, a line
    every ``every`` s); the per-epoch metrics lines on ``lines`` (stdout by default)."""

    def __init__(self, stream=None, every: float = 10.0, lines=None):
        self.stream = stream or sys.stderr
        self.lines = lines or sys.stdout
        self.every = every
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = 0.0

    def batch(self, p) -> None:
        now = time.time()
        if self.tty:
            self.stream.write("\r" + progress_line(p))
            self.stream.flush()
        elif p.done == p.total or now - self.last >= self.every:
            self.stream.write(progress_line(p) + "\n")
            self.stream.flush()
            self.last = now

    def epoch(self, metrics: dict) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
        self.lines.write(epoch_line(metrics) + "\n")
        self.lines.flush()


# ------------------------------------------------------------------ Ray Train
def ray_storage(out: str, storage_options: dict | None) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for RunConfig: local paths as absolute paths,
    object stores through our fsspec filesystem (same credentials/endpoint as the data)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(out, **(storage_options or {}))
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    if "file" in protocols or "local" in protocols:
        return os.path.abspath(path), None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return path, PyFileSystem(FSSpecHandler(fs))


def _plain(metrics: dict) -> dict:
    """Metrics Ray can store: numbers, strings, bools, None."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _make_ray_session(settings):
    """Built inside the worker (ray and torch.distributed are set up there)."""
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train.torch import get_device

    from vip2scan.model.training import checkpoints, loop

    class RaySession(loop.Session):
        def __init__(self):
            ctx = ray.train.get_context()
            self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
            self.progress = TerminalProgress(sys.stdout, lines=sys.stdout)
            super().__init__(get_device(), on_batch=self.progress.batch, on_epoch=self.progress.epoch)

        def restored_epoch(self) -> int | None:
            """The newer of Ray's restored checkpoint and OUT/latest.

            Ray registers a reported checkpoint when its controller next polls the
            workers; a worker dying right after ``report`` can lose that registration,
            while OUT/latest was already written. Reading OUT/latest here is safe: the
            driver refuses to start on an OUT that has one unless --resume is given, so
            any pointer found now was written by this run (or is the one to resume).
            """
            epochs = [checkpoints.read_latest_epoch(settings.out, settings.storage_options) or 0]
            checkpoint = ray.train.get_checkpoint()
            if checkpoint is not None:
                with checkpoint.as_directory() as d:
                    with open(os.path.join(d, POINTER_FILE)) as f:
                        epochs.append(int(json.load(f)["epoch"]))
            return max(epochs) or None

        def average_gradients(self, params) -> None:
            loop.allreduce_mean_([p.grad for p in params])

        def broadcast_parameters(self, params) -> None:
            if self.world_size > 1:
                with torch.no_grad():
                    for p in params:
                        dist.broadcast(p.data, src=0)

        def sum_over_ranks(self, values: list[float]) -> list[float]:
            t = torch.tensor(values, dtype=torch.float64, device=self.device)
            if self.world_size > 1:
                dist.all_reduce(t)
            return t.tolist()

        def batch_done(self, progress) -> None:
            if (settings.fault_kill_epoch == progress.epoch and self.rank == 0
                    and _claim_fault_marker(settings.out, settings.storage_options)):
                sys.stdout.write(f"test hook {FAULT_ENV}: rank 0 exits during epoch {progress.epoch}\n")
                sys.stdout.flush()
                os._exit(17)
            super().batch_done(progress)

        def epoch_done(self, epoch: int, metrics: dict) -> None:
            super().epoch_done(epoch, metrics)
            if self.rank != 0:
                ray.train.report(_plain(metrics))
                return
            with tempfile.TemporaryDirectory() as d:
                with open(os.path.join(d, POINTER_FILE), "w") as f:
                    json.dump({"epoch": epoch, "checkpoint": metrics.get("checkpoint")}, f)
                ray.train.report(_plain(metrics), checkpoint=ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=checkpoints.epoch_dir_name(epoch))

    return RaySession()


def _claim_fault_marker(out: str, storage_options: dict | None) -> bool:
    """True the first time for this output (then the marker exists)."""
    from vip2scan.model.files import join_uri, read_text, write_bytes
    from vip2scan.model.training.checkpoints import RAY_DIR

    marker = join_uri(out, RAY_DIR, FAULT_MARKER)
    if read_text(marker, storage_options) is not None:
        return False
    write_bytes(marker, b"fired\n", storage_options)
    return True


def ray_train_worker(config: dict) -> None:
    """Ray Train's per-worker entry point."""
    import torch

    from vip2scan.model.training import loop

    # Ray Train routes worker logging at INFO to the driver; open_clip logs every model
    # build at INFO on the root logger. Our progress is written to stdout directly.
    logging.getLogger().setLevel(logging.WARNING)
    threads = int(config.pop("_threads", 0) or 0)
    if threads:  # one worker per reserved CPU: don't let torch oversubscribe the node
        torch.set_num_threads(threads)
    settings = loop.TrainSettings(**config)
    loop.train_loop(settings, _make_ray_session(settings))


def run_ray(settings, workers: int, use_gpu: bool, cpus_per_worker: float, max_failures: int,
            ray_address: str | None) -> dict:
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address=ray_address, configure_logging=False)
    storage_path, storage_fs = ray_storage(settings.out, settings.storage_options)
    config = settings.to_dict()
    config["_threads"] = max(1, int(cpus_per_worker))
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=RAY_RUN_NAME, storage_path=storage_path, storage_filesystem=storage_fs,
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    result = trainer.fit()
    return dict(result.metrics or {})


def _worker_entry(config: dict) -> None:
    # A module-level function, so Ray pickles it by reference to this module.
    ray_train_worker(dict(config))


# ------------------------------------------------------------------ the command
def _read_records(data: str, split: Optional[str], categories: Optional[list[str]], storage_options: dict) -> list[dict]:
    from vip2scan.model.data.readers import read_dataset

    samples = read_dataset(data, split=split, categories=categories, storage_options=storage_options)
    if not samples:
        raise UsageError(f"no labelled images found in {data}" + (f" for {categories}" if categories else ""))
    return [dataclasses.asdict(s) for s in samples]


def split_list(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def train(
    data: Annotated[str, typer.Argument(help="MVTec-style root, VisA root (split_csv/1cls.csv) or a manifest (CSV/JSONL/Parquet).")],
    out: Annotated[str, typer.Option("--out", help="Checkpoint root: epoch_NNN/, latest, best/, _ray/ (local path or URI).")],
    val: Annotated[Optional[str], typer.Option(help="Validation data (same formats); enables OUT/best.")] = None,
    categories: Annotated[Optional[str], typer.Option(help="Comma-separated categories of DATA to train on (default all).")] = None,
    split: Annotated[str, typer.Option(help="Split to read ('test' as the paper: train on one dataset's test split).")] = "test",
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1, help="Global batch size, split across workers.")] = 8,
    lr_ica: Annotated[float, typer.Option(help="Adam learning rate of the prompt adapter (ICA).")] = 1e-3,
    lr_fgp: Annotated[float, typer.Option(help="Adam learning rate of FGP.")] = 1e-5,
    seed: Annotated[int, typer.Option(help="Data order and torch seed.")] = 111,
    backbone: Annotated[str, typer.Option(help="OpenCLIP model config (vip2-synth: the embedded model's backbone, with --weights "
                     "embedded:backbone.safetensors; vip2-tiny: random init).")] = "vip2-tiny",
    weights: Annotated[Optional[str], typer.Option(help="Backbone weights: safetensors path/URI or OpenCLIP tag.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input size in pixels (default: the model config's).")] = None,
    workers: Annotated[int, typer.Option(min=0, help="Ray Train workers; 0 = one process without Ray.")] = 1,
    use_gpu: Annotated[bool, typer.Option("--use-gpu", help="One GPU per worker (NCCL); else CPU (gloo).")] = False,
    cpus_per_worker: Annotated[float, typer.Option(min=0.1)] = 1.0,
    max_failures: Annotated[int, typer.Option(help="Worker-group restarts from the latest checkpoint.")] = 3,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/latest (and Ray's run state).")] = False,
    threads: Annotated[int, typer.Option(min=1, help="Image decoding threads per worker.")] = 4,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: RAY_ADDRESS or a local Ray).")] = None,
    storage_option: Annotated[Optional[list[str]], typer.Option(
        "--storage-option", "-s", metavar="KEY=VALUE", help="fsspec option for DATA and OUT (repeatable).")] = None,
    config: ConfigOption = None,
) -> None:
    """Train the ViP2-CLIP head (ICA + FGP) on labelled images; the backbone stays frozen."""
    from vip2scan.model.data.loading import has_pixel_truth
    from vip2scan.model.files import join_uri
    from vip2scan.model.training import checkpoints, loop
    from vip2scan.model.config import DetectorConfig

    storage_options = storage_options_from_flags(storage_option)
    latest = checkpoints.read_latest_epoch(out, storage_options)
    if latest and not resume:
        raise UsageError(f"{out} already holds checkpoints (latest: epoch {latest}); "
                         "pass --resume to continue, or choose another --out")
    records = _read_records(data, split, split_list(categories), storage_options)
    val_records = _read_records(val, split, None, storage_options) if val else []
    model = DetectorConfig(backbone=backbone, weights=weights)
    if image_size:
        model = model.replace(image_size=image_size)
    fault = os.environ.get(FAULT_ENV)
    settings = loop.TrainSettings(
        out=out, records=records, model=model.to_dict(), val_records=val_records, epochs=epochs,
        batch_size=batch_size, lr_ica=lr_ica, lr_fgp=lr_fgp, seed=seed, resume=resume,
        loader_threads=threads, storage_options=storage_options or None,
        fault_kill_epoch=int(fault) if fault else None)
    skipped = sum(1 for r in records if not has_pixel_truth(r))
    typer.echo(f"training on {len(records) - skipped} images ({len(set(r['category'] for r in records))} "
               f"categories) from {data}" + (f"; {skipped} anomalous without mask skipped" if skipped else "")
               + (f"; resuming after epoch {latest}" if latest and resume else ""))
    if workers == 0:
        import torch

        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        progress = TerminalProgress()
        final = loop.train_loop(settings, loop.Session(device, progress.batch, progress.epoch))
    else:
        final = run_ray(settings, workers, use_gpu, cpus_per_worker, max_failures, ray_address)
    done = checkpoints.read_latest_epoch(out, storage_options)
    if not done:
        raise JobError("training finished without writing a checkpoint")
    if not final:
        typer.echo(f"nothing to do: {out} already has epoch {done} of {epochs}")
    checkpoint = join_uri(out, checkpoints.epoch_dir_name(done))
    typer.echo(f"checkpoint: {checkpoint}" + (f"  best: {join_uri(out, checkpoints.BEST_DIR)}" if val else ""))
    typer.echo(f"next: vip2scan eval DATA --checkpoint {out}   |   "
               f"vip2scan scan SOURCE --out OUT --checkpoint {checkpoint}")


train.__doc__ = (train.__doc__ or "") + "\n\n" + EXAMPLE


def register(app: typer.Typer) -> None:
    app.command("train", help=train.__doc__)(train)
