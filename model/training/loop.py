"""The training loop of ``vip2scan train``, shared by Ray Train workers and ``--workers 0``.

No Ray here: the caller hands :func:`train_loop` a :class:`Session` that says which rank
this process is, how to average gradients, and where to report each epoch. The local
session does all of that in-process; jobs/train.py supplies the Ray Train one.

Layout under the output URI (local path or any fsspec URI):
    OUT/epoch_001/  our checkpoint (weights.safetensors + config.json) plus
                    train_state.pt (optimizer, for resuming) and train_info.json (metrics)
    OUT/latest      small JSON pointer to the newest complete epoch directory
    OUT/best/       a copy of the epoch with the best validation score (with --val only)
    OUT/_ray/       Ray Train's own run state
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import numpy as np
import torch

from ..config import DetectorConfig
from ..data.loading import has_pixel_truth, load_sample, prefetched
from ..detector import Detector
from ..errors import DatasetError
from ..files import join_uri, read_text
from ..images import to_batch
from .checkpoints import (BEST_DIR, TRAIN_INFO_FILE, TRAIN_STATE_FILE, copy_dir, epoch_dir_name,
                     read_latest_epoch, write_latest)
from .evaluation import evaluate_records
from .step import make_optimizer, train_step


def shard_indices(n: int, epoch: int, seed: int, rank: int, world_size: int) -> list[int]:
    """This rank's part of the epoch's shuffled order.

    The order depends on (seed, epoch) only, so a resumed epoch sees the same data. The
    order is padded by wrapping to a multiple of world_size so every rank takes the same
    number of steps (ranks with fewer steps would leave the others waiting in all-reduce).
    """
    order = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    if n and n % world_size:
        order += order[: world_size - n % world_size]
    return order[rank::world_size]


def iter_train_batches(records: Sequence[Any], indices: Sequence[int], batch_size: int, size: int,
                       storage_options: dict | None = None, threads: int = 4
                       ) -> Iterator[dict[str, torch.Tensor]]:
    """Batches in train_step's format: image uint8 [N,3,S,S], mask float [N,S,S], label long [N]."""
    samples = prefetched(lambda i: load_sample(records[i], size, storage_options),
                         indices, threads=threads, window=max(2 * batch_size, 8))
    chunk: list[tuple[np.ndarray, np.ndarray, int]] = []
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == batch_size:
            yield _collate(chunk)
            chunk = []
    if chunk:
        yield _collate(chunk)


def _collate(samples: list[tuple[np.ndarray, np.ndarray, int]]) -> dict[str, torch.Tensor]:
    return {"image": to_batch([s[0] for s in samples]),
            "mask": torch.from_numpy(np.stack([s[1] for s in samples])).float(),
            "label": torch.tensor([s[2] for s in samples], dtype=torch.long)}


# ------------------------------------------------------------------ settings + session
@dataclass
class TrainSettings:
    """Everything a training worker needs (JSON-able: it travels to Ray workers)."""

    out: str
    records: list[dict]
    model: dict = field(default_factory=lambda: DetectorConfig().to_dict())
    val_records: list[dict] = field(default_factory=list)
    epochs: int = 10
    batch_size: int = 8  # global batch: split evenly across workers
    lr_ica: float = 1e-3
    lr_fgp: float = 1e-5
    seed: int = 111
    resume: bool = False
    loader_threads: int = 4
    storage_options: dict | None = None
    init_checkpoint: str | None = None  # start the head from this checkpoint instead of ``model``
    fault_kill_epoch: int | None = None  # test hook, see jobs/train.py

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BatchProgress:
    epoch: int
    epochs: int
    done: int
    total: int
    loss: float
    images: int
    seconds: float


class Session:
    """One process's view of a training run. This base class is the single-process run."""

    rank: int = 0
    world_size: int = 1

    def __init__(self, device: str | torch.device = "cpu",
                 on_batch: Callable[[BatchProgress], None] | None = None,
                 on_epoch: Callable[[dict], None] | None = None):
        self.device = torch.device(device)
        self._on_batch, self._on_epoch = on_batch, on_epoch

    def restored_epoch(self) -> int | None:
        """Epoch of the checkpoint the framework restored after a failure (None: none)."""
        return None

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Make every rank's gradients the mean over ranks (no-op for one process)."""

    def broadcast_parameters(self, params: list[torch.nn.Parameter]) -> None:
        """Make every rank start from rank 0's weights (no-op for one process)."""

    def sum_over_ranks(self, values: list[float]) -> list[float]:
        return list(values)

    def batch_done(self, progress: BatchProgress) -> None:
        if self._on_batch and self.rank == 0:
            self._on_batch(progress)

    def epoch_done(self, epoch: int, metrics: dict) -> None:
        """Called on every rank after rank 0 wrote the epoch's checkpoint."""
        if self._on_epoch and self.rank == 0:
            self._on_epoch(metrics)


def allreduce_mean_(tensors: list[torch.Tensor]) -> None:
    """In-place mean over ranks with one flat all-reduce (torch.distributed must be up)."""
    import torch.distributed as dist

    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


class GradientSyncingOptimizer:
    """Adam (or any optimizer) whose ``step`` first averages gradients across ranks.

    Why not torch DDP: train_step calls ``detector.forward_train`` directly, which DDP
    cannot intercept, and the head is small (about 4 M parameters at ViT-L), so one flat
    all-reduce per step costs little next to the frozen backbone's forward.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, session: Session):
        self.optimizer, self.session = optimizer, session

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]
        for p in params:  # every rank must send the same shapes, unused or not
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.session.average_gradients(params)
        return self.optimizer.step(closure)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)


# ------------------------------------------------------------------ the loop
def _mean(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def validation_score(rows: list[dict]) -> float:
    """What --val ranks epochs by: mean of image AUROC and pixel AUROC (mean row)."""
    mean = rows[-1]
    return _mean([mean.get("image_auroc"), mean.get("pixel_auroc")])


def _save_train_state(uri: str, optimizer: torch.optim.Optimizer, info: dict,
                      storage_options: dict | None) -> None:
    buf = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "epoch": info["epoch"]}, buf)
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    fs.pipe_file(join_uri(path, TRAIN_STATE_FILE), buf.getvalue())
    fs.pipe_file(join_uri(path, TRAIN_INFO_FILE), json.dumps(info, indent=2).encode())


def load_train_info(epoch_uri: str, storage_options: dict | None = None) -> dict:
    text = read_text(join_uri(epoch_uri, TRAIN_INFO_FILE), storage_options)
    return json.loads(text) if text else {}


def _load_optimizer_state(epoch_uri: str, optimizer: torch.optim.Optimizer,
                          storage_options: dict | None) -> None:
    fs, path = fsspec.core.url_to_fs(epoch_uri, **(storage_options or {}))
    state = torch.load(io.BytesIO(fs.cat_file(join_uri(path, TRAIN_STATE_FILE))),
                       map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])


def start_epoch(settings: TrainSettings, session: Session) -> int:
    """Last finished epoch to continue from (0 = fresh): the newer of what the framework
    restored after a failure and, with --resume, what OUT/latest names."""
    restored = session.restored_epoch() or 0
    latest = read_latest_epoch(settings.out, settings.storage_options) if settings.resume else None
    return max(restored, latest or 0)


def train_loop(settings: TrainSettings, session: Session) -> dict:
    """Train epochs (start+1 .. settings.epochs); rank 0 writes a checkpoint per epoch.

    Returns the last epoch's metrics (empty when there was nothing left to do).
    """
    so = settings.storage_options
    torch.manual_seed(settings.seed)
    first = start_epoch(settings, session)
    history: list[dict] = []
    if first:
        resumed_uri = join_uri(settings.out, epoch_dir_name(first))
        detector = Detector.from_checkpoint(resumed_uri, device=session.device, storage_options=so)
        history = load_train_info(resumed_uri, so).get("history", [])
    elif settings.init_checkpoint:
        detector = Detector.from_checkpoint(settings.init_checkpoint, device=session.device, storage_options=so)
    else:
        detector = Detector.from_config(DetectorConfig.from_dict(settings.model),
                                        device=session.device, storage_options=so)
    optimizer = make_optimizer(detector, settings.lr_ica, settings.lr_fgp)
    if first:
        _load_optimizer_state(resumed_uri, optimizer, so)
    params = [p for group in detector.head_parameters().values() for p in group]
    session.broadcast_parameters(params)
    synced = GradientSyncingOptimizer(optimizer, session) if session.world_size > 1 else optimizer
    records = [r for r in settings.records if has_pixel_truth(r)]
    if not records:
        raise DatasetError("no training images: every anomalous image lacks a mask")
    per_rank_batch = max(1, settings.batch_size // session.world_size)
    best = max((h["val_score"] for h in history if h.get("val_score") is not None
                and math.isfinite(h["val_score"])), default=-math.inf)
    metrics: dict = {}
    for epoch in range(first + 1, settings.epochs + 1):
        t0 = time.time()
        indices = shard_indices(len(records), epoch, settings.seed, session.rank, session.world_size)
        total = math.ceil(len(indices) / per_rank_batch)
        sums: dict[str, float] = {}
        n_images = 0
        batches = iter_train_batches(records, indices, per_rank_batch, detector.image_size, so,
                                     settings.loader_threads)
        for done, batch in enumerate(batches, start=1):
            losses = train_step(detector, batch, synced)
            n = int(batch["label"].shape[0])
            n_images += n
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v * n
            session.batch_done(BatchProgress(epoch, settings.epochs, done, total,
                                             sums["loss"] / n_images, n_images, time.time() - t0))
        keys = sorted(sums)
        reduced = session.sum_over_ranks([sums[k] for k in keys] + [float(n_images)])
        metrics = {"epoch": epoch, **{k: v / max(reduced[-1], 1.0) for k, v in zip(keys, reduced)},
                   "images": int(reduced[-1]), "train_seconds": time.time() - t0,
                   "world_size": session.world_size, "resumed_from": first or None}
        if session.rank == 0:
            metrics.update(_finish_epoch(settings, detector, optimizer, epoch, metrics, history, best))
            best = max(best, metrics.get("val_score", -math.inf))
        session.epoch_done(epoch, metrics)
    return metrics


def _finish_epoch(settings: TrainSettings, detector, optimizer, epoch: int, metrics: dict,
                  history: list[dict], best: float) -> dict:
    """Rank 0: validation, epoch checkpoint, best copy, then the latest pointer (last)."""
    so = settings.storage_options
    extra: dict = {}
    if settings.val_records:
        result = evaluate_records(detector, settings.val_records, batch_size=settings.batch_size,
                                  storage_options=so, threads=settings.loader_threads)
        extra = {"val_score": validation_score(result.rows),
                 "val_image_auroc": result.rows[-1]["image_auroc"],
                 "val_pixel_auroc": result.rows[-1]["pixel_auroc"]}
    history.append({**metrics, **extra})
    uri = join_uri(settings.out, epoch_dir_name(epoch))
    detector.save_checkpoint(uri, storage_options=so)
    _save_train_state(uri, optimizer, {**metrics, **extra, "history": history}, so)
    if extra and extra["val_score"] > best:
        copy_dir(uri, join_uri(settings.out, BEST_DIR), so)
        extra["best"] = True
    write_latest(settings.out, epoch, so)
    return {**extra, "checkpoint": uri}
