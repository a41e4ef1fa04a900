"""Inference + map write: the actor that holds a Detector, scores uint8 batches and writes
each ok row's map to the run's map store.

Like Ray's batch-inference examples: ``__init__`` loads the model once per actor (through
``Detector.from_checkpoint``, the one factory), ``__call__`` maps a numpy batch dict to a
batch dict. Rows decoded with an error pass through untouched (no pixels are sent to the
model). Per ok row the actor computes ``image_score``, ``is_anomalous``, ``max_pixel_score``
and ``anomalous_area_fraction`` (both on the device at model resolution) and the anomaly map,
resized to ``map_size`` and cast to float16 before it leaves the device; :class:`WriteMaps`
then writes the maps and drops them, so only small rows flow downstream.

The driver also learns the model's id, size and thresholds here (:func:`model_facts`)
before it plans a run.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..output.calibration import Thresholds, pick_thresholds, row_thresholds, thresholds_for
from ..storage.accounting import report_io
from ..output.map_store import write_maps
from ..storage.retries import take_retries
from ..output.schema import HAS_MAP
from ..storage.location import Location
from .units import concat_rows, is_packed, split_rows, unpack_decoded


@dataclass(frozen=True)
class ModelSpec:
    """Where the detector comes from, with optional overrides of its config."""

    checkpoint: str
    storage_options: dict = field(default_factory=dict, repr=False, compare=False)
    backbone: str | None = None
    weights: str | None = None
    image_size: int | None = None

    def overrides(self) -> dict[str, Any]:
        """The config fields this spec overrides (unset ones keep the checkpoint's)."""
        chosen = {"backbone": self.backbone, "weights": self.weights, "image_size": self.image_size}
        return {k: v for k, v in chosen.items() if v is not None}


def load_detector(spec: ModelSpec, device: str = "cpu", amp: str | None = "auto"):
    """The spec's detector from the one factory, in eval mode (the override rule lives there);
    the checkpoint name ``null[:<size>]`` gives the null detector (vip2scan.model.null)."""
    from vip2scan.model.null import build_null_detector, null_image_size

    null_size = null_image_size(spec.checkpoint, spec.overrides())
    if null_size is not None:
        return build_null_detector(null_size, device)
    from vip2scan.model.detector import Detector

    detector = Detector.from_checkpoint(spec.checkpoint, device=device,
                                        storage_options=spec.storage_options or None,
                                        overrides=spec.overrides(), amp=amp)
    detector.eval()
    return detector


@dataclass(frozen=True)
class ModelFacts:
    """What the driver plans a run with: the model's id, input size and saved thresholds."""

    model_id: str
    image_size: int
    image_threshold: float | None = None  # calibrated values saved in the checkpoint
    pixel_threshold: float | None = None


def model_facts(spec: ModelSpec) -> ModelFacts:
    """The facts of ``spec``'s model, cheaply where possible.

    A checkpoint directory used as saved is read without torch (its config and the weights
    header, checked against each other; see vip2scan.model.facts): the actors load and
    verify the weights. Anything else (a released .pth, an OpenCLIP name, config overrides
    that change the model id) is loaded in full here, which also proves it loads.
    """
    from vip2scan.model.facts import is_checkpoint_dir, read_checkpoint_facts
    from vip2scan.model.null import null_image_size, null_model_id

    null_size = null_image_size(spec.checkpoint, spec.overrides())
    if null_size is not None:  # no file and no torch: the name says it all
        return ModelFacts(null_model_id(null_size), null_size)
    options = spec.storage_options or None
    if not spec.overrides() and is_checkpoint_dir(spec.checkpoint, options):
        facts = read_checkpoint_facts(spec.checkpoint, options)
        return ModelFacts(facts.model_id, facts.image_size, facts.image_threshold,
                          facts.pixel_threshold)
    detector = load_detector(spec, device="cpu")
    config = detector.config
    facts = ModelFacts(str(detector.model_id), int(detector.image_size),
                       getattr(config, "image_threshold", None),
                       getattr(config, "pixel_threshold", None))
    del detector
    return facts


def resolve_thresholds(facts: ModelFacts, image_threshold: float | None,
                       pixel_threshold: float | None, out: Location | None = None) -> Thresholds:
    """Explicit values win, then the checkpoint's labelled ones (``eval --calibrate``), then
    OUT's label-free calibration of this model (``vip2scan calibrate``), then 0.5, which the
    result reports as uncalibrated."""
    if out is None:
        return pick_thresholds(image_threshold, pixel_threshold, facts.image_threshold,
                               facts.pixel_threshold, None)
    return thresholds_for(out, facts.model_id, image_threshold, pixel_threshold,
                          facts.image_threshold, facts.pixel_threshold)


@dataclass(frozen=True)
class InferSettings:
    model: ModelSpec
    map_size: int
    image_threshold: float
    pixel_threshold: float
    # (absolute URI prefix, threshold): a row under a prefix uses its threshold (label-free
    # calibration per product line), any other row ``image_threshold``
    image_thresholds: tuple[tuple[str, float], ...] = ()
    device: str | None = None  # None: cuda if the actor sees a GPU, else cpu
    torch_threads: int | None = None
    amp: str | None = "auto"
    channels_last: bool = False  # the model's input layout; the actor's NHWC pixels already are
    compile: bool = False  # torch.compile (static shapes: short batches are padded to batch_size)
    batch_size: int | None = None  # rows per call; needed to pad for compile
    expected_model_id: str | None = None
    faults: Any = field(default=None, repr=False)  # faults.FaultHooks (tests only)


@dataclass(frozen=True)
class MapWriterSettings:
    out_uri: str
    store_name: str | None
    storage_options: dict | None = field(default=None, repr=False)
    wrapper: Any = field(default=None, repr=False)
    mode: str = "all"  # 'anomalous': only rows at or above their image threshold get a map


class WriteMaps:
    """map_batches callable: write the batch's maps to the Zarr store, drop the maps.

    Given a work unit (whole shards), each shard is written once, whole. Rows leave this stage
    only after their map is written, so the driver stages a row (the exactly-once record) only
    once its map is durable; ``has_map`` says which rows got one.
    """

    def __init__(self, settings: MapWriterSettings):
        self.settings = settings
        self.out = Location(settings.out_uri, settings.storage_options or {}, settings.wrapper)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        maps = batch.pop("map", None)
        n = len(batch["image_uri"])
        has_map = np.zeros(n, dtype=bool)
        if self.settings.store_name and maps is not None:
            has_map = np.asarray(batch["status"]) == "ok"
            if self.settings.mode == "anomalous":
                has_map &= np.asarray(batch.get("is_anomalous", has_map), dtype=bool)
            write_maps(self.out, self.settings.store_name,
                       np.asarray(batch["map_index"])[has_map].astype(np.int64), maps[has_map])
        batch[HAS_MAP] = has_map
        batch["write_s"] = np.full(n, (time.perf_counter() - t0) / max(n, 1))
        batch["retries"] = np.asarray(batch.get("retries", np.zeros(n)), dtype=float) + \
            take_retries() / max(n, 1)  # this process's storage retries, for the run record
        report_io(batch, n)  # this process's storage requests and bytes, for the run record
        return batch


def write_maps_batch(batch: dict[str, np.ndarray], settings: MapWriterSettings
                     ) -> dict[str, np.ndarray]:
    """Stateless form of :class:`WriteMaps` for tasks (the array is cached per process)."""
    return WriteMaps(settings)(batch)


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
        if settings.torch_threads:
            torch.set_num_threads(int(settings.torch_threads))
        device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        self.detector = load_detector(settings.model, device=device, amp=settings.amp)
        if settings.expected_model_id and self.detector.model_id != settings.expected_model_id:
            # The checkpoint changed between planning and this actor starting: refuse instead
            # of mixing two models' scores in one run.
            raise RuntimeError(
                f"checkpoint now has model_id {self.detector.model_id}, but the run was planned "
                f"with {settings.expected_model_id}")
        self.image_size = int(self.detector.image_size)
        self.run = prepare_for_device(self.detector, settings.channels_last, settings.compile)
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
                                split_rows(unit, int(self.settings.batch_size or 0))])

    def _to_device(self, pixels: np.ndarray, ok: np.ndarray):
        """uint8 [N, S, S, 3] host pixels of the ok rows -> [M, 3, S, S] on the device.

        On CUDA the rows are copied once into a reused pinned buffer, then sent without
        blocking; for torch.compile a short batch is padded to the compiled batch size.
        """
        import torch

        rows = pixels if ok.all() else pixels[ok]
        n = len(rows)
        size = max(n, int(self.settings.batch_size or 0)) if self.settings.compile else n
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
        return images if self.settings.channels_last else images.contiguous()

    def score(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Scores and maps of one batch (not thread-safe: ``__call__`` serialises it)."""
        import torch
        import torch.nn.functional as F

        t0 = time.perf_counter()
        out = {name: value for name, value in batch.items() if name != "pixels"}
        n = len(batch["image_uri"])
        r = int(self.settings.map_size)
        ok = np.asarray(batch["status"]) == "ok"
        image_score = np.full(n, np.nan, dtype=np.float32)
        max_pixel = np.full(n, np.nan, dtype=np.float32)
        area = np.full(n, np.nan, dtype=np.float32)
        maps = np.zeros((n, r, r), dtype=np.float16)
        if ok.any():
            images = self._to_device(batch["pixels"], ok)
            with torch.inference_mode():
                score, amap = self.run(images)
                score, amap = score[:int(ok.sum())], amap[:int(ok.sum())].float()
                # Both reductions at model resolution, on the device.
                peak = amap.flatten(1).amax(dim=1)
                frac = (amap >= self.settings.pixel_threshold).float().mean(dim=(1, 2))
                small = F.interpolate(amap[:, None], size=(r, r), mode="bilinear",
                                      align_corners=False, antialias=r < amap.shape[-1])[:, 0]
                small = small.clamp_(0.0, 1.0).to(torch.float16)
            image_score[ok] = score.float().cpu().numpy()
            max_pixel[ok] = peak.cpu().numpy()
            area[ok] = frac.cpu().numpy()
            maps[ok] = small.cpu().numpy()
        thresholds = row_thresholds(batch["image_uri"], self.settings.image_threshold,
                                    self.settings.image_thresholds)
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
