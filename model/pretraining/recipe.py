"""The recipe that rebuilds the embedded checkpoint from nothing (``vip2scan train-embedded``).

1. pretrain the ``vip2-synth`` backbone on generated images (:mod:`.loop`);
2. train a ViP2 head on it with the paper's recipe (the losses and loop of ``vip2scan train``)
   on an auxiliary generated MVTec-style set of the training products and defects, and set
   its image and pixel thresholds at F1-max on a labelled set of the same kind (new seeds);
3. evaluate on a held-out generated lake (unseen products, unseen defect kinds);
4. write ``backbone.safetensors`` (float16), ``head/`` and ``provenance.json`` into OUT.

Everything is seeded; on the same torch build and thread count the rebuild repeats its
numbers (the tests run a few steps of it; docs/guide/embedded-model.md says how long the full one takes).
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import save_checkpoint
from ..config import DetectorConfig
from ..data.readers import read_mvtec
from ..data.splits import (HELD_OUT_CATEGORIES, HELD_OUT_DEFECTS, TRAIN_CATEGORIES, TRAIN_DEFECTS,
                           describe)
from ..data.synthetic import GENERATOR_VERSION, write_mvtec_tree
from ..detector import Detector
from ..metrics.peaks import half_patch_reach, peak_on_defect
from ..embedded import BACKBONE_FILE, HEAD_DIR, PROVENANCE_FILE, WEIGHTS_PREFIX, file_hashes
from ..training.evaluation import evaluate_records, score_records, sort_by_category
from ..training.loop import Session, TrainSettings, train_loop
from .head_init import warm_start_head
from .loop import PretrainSettings, pretrain


@dataclass
class HeadSettings:
    """The ViP2 head's training (paper: Adam, ICA 1e-3, FGP 1e-5, batch 8, seed 111).

    FGP's rate is raised: the paper fine-tunes FGP on a pretrained ViT-L for 10 epochs of
    VisA; here it starts from scratch on a small set and has a few hundred steps.
    """

    good_per_category: int = 24
    defects_per_kind: int = 10
    size: int = 112
    epochs: int = 5
    batch_size: int = 8
    lr_ica: float = 1e-3
    lr_fgp: float = 1e-4
    seed: int = 111
    data_seed: int = 7


@dataclass
class GeneratedSet:
    """A labelled MVTec-style set drawn from the generator: per product, normal images and
    images of each defect kind, at one size, from one seed."""

    good_per_category: int
    defects_per_kind: int
    size: int = 224
    seed: int = 0


def calibration_set() -> GeneratedSet:
    """Training products and defects (new seeds): the shipped image and pixel thresholds are set
    on it at F1-max, as ``vip2scan eval --calibrate`` does."""
    return GeneratedSet(good_per_category=8, defects_per_kind=3, seed=55)


def held_out_set() -> GeneratedSet:
    """The held-out lake: unseen products, whose defective images carry only unseen defect kinds."""
    return GeneratedSet(good_per_category=20, defects_per_kind=10, seed=99)


@dataclass
class RecipeSettings:
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    head: HeadSettings = field(default_factory=HeadSettings)
    calibration: GeneratedSet = field(default_factory=calibration_set)
    eval: GeneratedSet = field(default_factory=held_out_set)
    threads: int = 2

    def to_dict(self) -> dict:
        return {"pretrain": self.pretrain.to_dict(), "head": asdict(self.head),
                "calibration": asdict(self.calibration), "eval": asdict(self.eval), "threads": self.threads}


def write_held_out_lake(root: str, settings: GeneratedSet) -> str:
    """The held-out evaluation set as an MVTec-style tree (what ``vip2scan eval`` reads)."""
    return write_mvtec_tree(root, categories=HELD_OUT_CATEGORIES, defects=HELD_OUT_DEFECTS,
                            n_good=settings.good_per_category, n_defect=settings.defects_per_kind,
                            n_train=0, size=settings.size, seed=settings.seed)


def peak_rates(detector: Detector, records: list) -> dict[str, float]:
    """Share of defective images whose map peaks inside the defect (``peak_inside_defect``) and
    within half a patch of it (``peak_near_defect``)."""
    defective = [r for r in records if int(r.label) == 1 and r.mask_uri]
    inside, near = [], []
    size = detector.image_size
    reach = half_patch_reach(int(detector.config.patch_size), size, size, size)  # maps at model size
    for batch in score_records(detector, defective, batch_size=16):
        for mask, amap in zip(batch["mask"], batch["anomaly_map"]):
            inside.append(peak_on_defect(mask, amap))
            near.append(peak_on_defect(mask, amap, reach))
    nan = float("nan")
    return {"peak_inside_defect": float(np.mean(inside)) if inside else nan,
            "peak_near_defect": float(np.mean(near)) if near else nan}


def calibrate(detector: Detector, root: str, settings: GeneratedSet) -> dict:
    """Set the detector's image and pixel thresholds at F1-max on a labelled calibration set."""
    write_mvtec_tree(root, categories=TRAIN_CATEGORIES, defects=TRAIN_DEFECTS, n_good=settings.good_per_category,
                     n_defect=settings.defects_per_kind, n_train=0, size=settings.size, seed=settings.seed)
    records = read_mvtec(root, "test")
    result = evaluate_records(detector, records, batch_size=16, calibrate=True)
    detector.set_thresholds(result.image_threshold, result.pixel_threshold)
    return {"image_threshold": result.image_threshold, "pixel_threshold": result.pixel_threshold,
            "images": len(records)}


def evaluate_embedded(detector: Detector, root: str) -> dict:
    """Image AUROC, pixel AUROC, AUPRO (means over categories) and the peak-inside rate."""
    records = sort_by_category(read_mvtec(root, "test"))
    result = evaluate_records(detector, records, batch_size=16)
    mean = result.rows[-1]
    out = {k: float(mean[k]) for k in ("image_auroc", "pixel_auroc", "pixel_aupro")}
    out.update(peak_rates(detector, records))
    out["per_category"] = {r["category"]: {k: float(r[k]) for k in ("image_auroc", "pixel_auroc", "pixel_aupro")}
                           for r in result.rows[:-1]}
    out["images"] = int(result.n_images)
    return out


def _save_backbone(clip: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in clip.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "open_clip", "config": "vip2-synth",
                                             "source": "vip2scan train-embedded"})


def build_embedded(out: Path, settings: RecipeSettings, command: str,
                   say: Callable[[str], None] = print, device: str = "cpu") -> dict:
    """Run the whole recipe; write the shipped files into ``out``. Returns the provenance."""
    torch.set_num_threads(settings.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="vip2scan-embedded-") as tmp:
        work = Path(tmp)
        say(f"[1/4] pretraining {settings.pretrain.backbone} for {settings.pretrain.steps} steps "
            f"of {settings.pretrain.batch_size} generated images")
        every = max(1, settings.pretrain.steps // 10)
        clip, pretrain_log = pretrain(settings.pretrain, device, on_step=lambda e: e["step"] % every == 0 and say(
            f"  step {e['step']:5d}  loss {e['loss']:.3f} (contrastive {e['contrastive']:.3f}, "
            f"dense {e['dense']:.3f})  {e['seconds']:.0f} s"))
        backbone_path = work / BACKBONE_FILE
        _save_backbone(clip, backbone_path)
        timings["pretrain_s"] = time.monotonic() - started

        say("[2/4] training the ViP2 head on generated training products and defects")
        t0 = time.monotonic()
        head = settings.head
        head_root = write_mvtec_tree(str(work / "head_data"), categories=TRAIN_CATEGORIES, defects=TRAIN_DEFECTS,
                                     n_good=head.good_per_category, n_defect=head.defects_per_kind, n_train=0,
                                     size=head.size, seed=head.data_seed)
        records = read_mvtec(head_root, "test")
        model = DetectorConfig(backbone=settings.pretrain.backbone, weights=str(backbone_path),
                               image_size=head.size, seed=head.seed)
        warm_start_head(Detector.from_config(model, device=device)).save_checkpoint(str(work / "head_init"))
        train_settings = TrainSettings(out=str(work / "head_run"), records=records, model=model.to_dict(),
                                       epochs=head.epochs, batch_size=head.batch_size, lr_ica=head.lr_ica,
                                       lr_fgp=head.lr_fgp, seed=head.seed, loader_threads=2,
                                       init_checkpoint=str(work / "head_init"))
        metrics = train_loop(train_settings, Session(device, on_epoch=lambda m: say(
            f"  epoch {m['epoch']}  loss {m['loss']:.3f}  {m['train_seconds']:.0f} s")))
        detector = Detector.from_checkpoint(metrics["checkpoint"], device=device)
        calibration = calibrate(detector, str(work / "calibration"), settings.calibration)
        say(f"  thresholds at F1-max on {calibration['images']} labelled training-product images: "
            f"image {calibration['image_threshold']:.3f}, pixel {calibration['pixel_threshold']:.3f}")
        timings["head_s"] = time.monotonic() - t0

        say("[3/4] evaluating on the held-out lake (unseen products and defect kinds)")
        t0 = time.monotonic()
        held_out = evaluate_embedded(detector, write_held_out_lake(str(work / "held_out"), settings.eval))
        timings["eval_s"] = time.monotonic() - t0
        say(f"  image AUROC {held_out['image_auroc']:.3f}  pixel AUROC {held_out['pixel_auroc']:.3f}  "
            f"AUPRO {held_out['pixel_aupro']:.3f}  map maximum inside the defect {held_out['peak_inside_defect']:.0%}, "
            f"within half a patch {held_out['peak_near_defect']:.0%}")

        say(f"[4/4] writing {out}")
        shutil.copyfile(backbone_path, out / BACKBONE_FILE)
        shipped = detector.config.replace(weights=WEIGHTS_PREFIX + BACKBONE_FILE)
        if (out / HEAD_DIR).exists():
            shutil.rmtree(out / HEAD_DIR)
        model_id = save_checkpoint(shipped, detector.head_state_dict(), str(out / HEAD_DIR))
    timings["total_s"] = time.monotonic() - started
    provenance = {
        "name": "embedded", "model_id": model_id, "backbone": settings.pretrain.backbone,
        "command": command, "settings": settings.to_dict(), "split": describe(),
        "generator_version": GENERATOR_VERSION,
        "data": {"pretrain_images": settings.pretrain.steps * settings.pretrain.batch_size,
                 "head_images": len(records), "calibration_images": calibration["images"],
                 "held_out_images": held_out["images"]},
        "pretrain_final": {k: pretrain_log[-1][k] for k in ("loss", "contrastive", "dense")},
        "head_final_loss": metrics.get("loss"), "calibration": calibration,
        "held_out": held_out, "timings": timings,
        "built_with": {"python": sys.version.split()[0], "torch": torch.__version__,
                       "machine": platform.machine(), "threads": settings.threads, "device": device},
        "sha256": file_hashes(out),
    }
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance
