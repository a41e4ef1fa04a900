"""Inference: the actor that holds a detector, scores uint8 batches and hands each ok row's map
to the map writer (stages/write_maps.py) in the same process.

Like Ray's batch-inference examples: ``__init__`` loads the model once per actor (through
``vip2scan.model.factory.load_detector``, the one factory), ``__call__`` maps a numpy batch dict
to a batch dict. Rows decoded with an error pass through untouched (no pixels are sent to the
model). Per ok row the actor computes ``image_score``, ``is_anomalous``, ``max_pixel_score``
and ``anomalous_area_fraction`` (both on the device at model resolution) and the anomaly map,
resized to ``map_size`` and cast to float16 before it leaves the device; the map writer
then writes the maps and drops them, so only small rows flow downstream.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vip2scan.model.factory import ModelSpec, load_detector

from ..output.calibration import Thresholds
from ..specs import EngineSpec, MapSpec
from ..storage.accounting import report_io
from .units import concat_rows, is_packed, split_rows, unpack_decoded
from .write_maps import MapWriterSettings, WriteMaps


@dataclass(frozen=True)
class InferSettings:
    """What an inference actor needs, derived from the run's specs (picklable)."""

    model_spec: ModelSpec
    map_spec: MapSpec  # map_size: the maps' side as they leave the actor
    thresholds: Thresholds  # image (per row, by prefix) and pixel thresholds, frozen in the plan
    engine_spec: EngineSpec  # device, batch_size, channels_last, compile, torch_threads
    checkpoint_storage_options: dict | None = field(default=None, repr=False)
    expected_model_id: str | None = None
    faults: Any = field(default=None, repr=False)  # faults.FaultHooks (tests only)


def prepare_for_device(detector: Any, channels_last: bool = False, compile_model: bool = False) -> Any:
    """Apply the GPU-path options to a detector: channels_last layout and torch.compile.

    channels_last only changes the patch-embedding convolution's layout (the rest of a ViT is
    matmuls), so it is an option to measure, not a default. Returns the callable to run.
    """
    import torch

    if channels_last:
        detector = detector.to(memory_format=torch.channels_last)
    if compile_model:
        return torch.compile(detector, dynamic=False)
    return detector


class InferActor:
    """Inference actor: uint8 [N, S, S, 3] pixels -> scores + float16 [N, R, R] maps.

    With ``maps`` the maps are written to Zarr here and leave as ``write_s`` instead.
    """

    def __init__(self, settings: InferSettings, maps: MapWriterSettings | None = None):
        import torch

        t0 = time.perf_counter()
        self.settings = settings
        engine = settings.engine_spec
        if engine.torch_threads:
            torch.set_num_threads(int(engine.torch_threads))
        device = engine.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        self.batch_size = int(engine.batch_size)
        self.compile = bool(engine.compile)
        self.channels_last = bool(engine.channels_last)
        self.detector = load_detector(settings.model_spec, device,
                                      settings.checkpoint_storage_options)
        if settings.expected_model_id and self.detector.model_id != settings.expected_model_id:
            # The checkpoint changed between planning and this actor starting: refuse instead
            # of mixing two models' scores in one run.
            raise RuntimeError(
                f"checkpoint now has model_id {self.detector.model_id}, but the run was planned "
                f"with {settings.expected_model_id}")
        self.image_size = int(self.detector.image_size)
        self.run = prepare_for_device(self.detector, self.channels_last, self.compile)
        self._pinned: Any = None  # reused host buffer for host -> GPU copies
        self.pid = os.getpid()
        self.batches_seen = 0
        self._model_lock = threading.Lock()
        self._map_writer = WriteMaps(maps) if maps is not None else None
        # Reported once, with the first batch, so the driver can show actor start-up time.
        self._unreported_init_s = time.perf_counter() - t0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch of packed work units (stages/units.py) or of plain rows -> score rows."""
        units = list(unpack_decoded(batch)) if is_packed(batch) else [batch]
        scored = []
        for unit in units:
            out = self.score_unit(unit)
            if self._map_writer is not None:
                # A row leaves only once its map is durable: the driver stages rows (the
                # exactly-once record) as soon as it sees them.
                out = self._map_writer(out)
            scored.append(out)
        result = concat_rows(scored)
        report_io(result, len(result["image_uri"]))  # e.g. a checkpoint read, maps off
        return result

    def score_unit(self, unit: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Scores and maps of a work unit, ``batch_size`` rows at a time through the model."""
        with self._model_lock:
            self.batches_seen += 1
            if self.settings.faults is not None:
                self.settings.faults.on_actor_batch(self.batches_seen)
            return concat_rows([self.score(part) for part in
                                split_rows(unit, self.batch_size)])

    def _to_device(self, pixels: np.ndarray, ok: np.ndarray):
        """uint8 [N, S, S, 3] host pixels of the ok rows -> [M, 3, S, S] on the device.

        On CUDA the rows are copied once into a reused pinned buffer, then sent without
        blocking; for torch.compile a short batch is padded to the compiled batch size.
        """
        import torch

        rows = pixels if ok.all() else pixels[ok]
        n = len(rows)
        size = max(n, self.batch_size) if self.compile else n
        if self.device.type == "cuda":
            shape = (size, *rows.shape[1:])
            if self._pinned is None or self._pinned.shape[0] < size or \
                    tuple(self._pinned.shape[1:]) != tuple(rows.shape[1:]):
                self._pinned = torch.empty(shape, dtype=torch.uint8).pin_memory()
            # Reusing the buffer is safe: calls are serialised and each ends by copying its
            # results to the host, which waits for this copy to finish.
            host = self._pinned[:size]
            host[:n].copy_(torch.from_numpy(np.ascontiguousarray(rows)))
            if size > n:
                host[n:].zero_()
            images = host.to(self.device, non_blocking=True)
        else:
            images = torch.from_numpy(np.ascontiguousarray(rows))
            if size > n:
                images = torch.cat([images, images.new_zeros((size - n, *images.shape[1:]))])
        images = images.permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: channels_last
        return images if self.channels_last else images.contiguous()

    def score(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Scores and maps of one batch (not thread-safe: ``__call__`` serialises it)."""
        import torch
        import torch.nn.functional as F

        t0 = time.perf_counter()
        out = {name: value for name, value in batch.items() if name != "pixels"}
        n = len(batch["image_uri"])
        map_size = self.settings.map_spec.map_size
        ok = np.asarray(batch["status"]) == "ok"
        image_score = np.full(n, np.nan, dtype=np.float32)
        max_pixel = np.full(n, np.nan, dtype=np.float32)
        area = np.full(n, np.nan, dtype=np.float32)
        maps = np.zeros((n, map_size, map_size), dtype=np.float16)
        if ok.any():
            images = self._to_device(batch["pixels"], ok)
            with torch.inference_mode():
                score, amap = self.run(images)
                score, amap = score[:int(ok.sum())], amap[:int(ok.sum())].float()
                # Both reductions at model resolution, on the device.
                peak = amap.flatten(1).amax(dim=1)
                frac = (amap >= self.settings.thresholds.pixel_threshold).float().mean(dim=(1, 2))
                small = F.interpolate(amap[:, None], size=(map_size, map_size), mode="bilinear",
                                      align_corners=False, antialias=map_size < amap.shape[-1])[:, 0]
                small = small.clamp_(0.0, 1.0).to(torch.float16)
            image_score[ok] = score.float().cpu().numpy()
            max_pixel[ok] = peak.cpu().numpy()
            area[ok] = frac.cpu().numpy()
            maps[ok] = small.cpu().numpy()
        thresholds = self.settings.thresholds.for_rows(batch["image_uri"])
        out.update(
            image_score=image_score,
            is_anomalous=np.where(ok, image_score >= thresholds, False),
            max_pixel_score=max_pixel,
            anomalous_area_fraction=area,
            map=maps,
            infer_s=np.full(n, (time.perf_counter() - t0) / max(n, 1)),
            actor_init_s=np.zeros(n),
        )
        if self._unreported_init_s and n:
            out["actor_init_s"][0] = self._unreported_init_s
            self._unreported_init_s = 0.0
        return out
