"""The embedded checkpoint (``--checkpoint embedded``): the shipped files are the ones its
provenance describes, the one factory resolves the name, the model sees defects it was never
trained on, and the rebuild command works end to end (a few steps of it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vip2scan.errors import InvalidSetting
from vip2scan.model import embedded
from vip2scan.model.factory import ModelSpec, load_detector, model_facts

MAX_SHIPPED_BYTES = 40 * 1024 * 1024


def test_shipped_files_match_their_provenance() -> None:
    provenance = embedded.read_provenance()
    assert embedded.file_hashes() == provenance["sha256"]
    total = sum((embedded.EMBEDDED_DIR / name).stat().st_size for name in embedded.SHIPPED_FILES)
    assert total <= MAX_SHIPPED_BYTES
    # The provenance says how to remake the files and what was held out of training.
    assert provenance["command"].startswith("vip2scan train-embedded")
    split = provenance["split"]
    assert set(split["held_out_categories"]).isdisjoint(split["train_categories"])
    assert set(split["held_out_defects"]).isdisjoint(split["train_defects"])
    assert set(provenance["held_out"]["per_category"]) == set(split["held_out_categories"])


def test_the_factory_resolves_the_reserved_name() -> None:
    facts = model_facts(ModelSpec("embedded"))
    provenance = embedded.read_provenance()
    assert facts.model_id == provenance["model_id"]
    assert facts.image_size == 112
    # Thresholds were set on labelled generated data: a scan flags images without calibration.
    assert facts.image_threshold is not None and 0 < facts.image_threshold < 1
    assert facts.pixel_threshold is not None and 0 < facts.pixel_threshold < 1
    detector = load_detector(ModelSpec("embedded"))
    assert detector.model_id == facts.model_id
    assert detector.config.backbone == "vip2-synth"


def test_an_uninstalled_embedded_checkpoint_is_one_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(embedded, "EMBEDDED_DIR", tmp_path / "nothing-here")
    with pytest.raises(InvalidSetting, match="embedded checkpoint is not installed"):
        ModelSpec("embedded").require_checkpoint()


def test_weight_references_cannot_leave_the_embedded_folder() -> None:
    with pytest.raises(embedded.EmbeddedMissing):
        embedded.resolve_weights("embedded:../config.py")


def test_heat_lands_on_defects_of_unseen_products_and_kinds() -> None:
    """Held-out products with held-out defect kinds, straight through the detector: the map peaks
    on the defect (within half a patch) for most images and separates defect pixels from the rest."""
    from sklearn.metrics import roc_auc_score

    from vip2scan.model.data.splits import HELD_OUT_CATEGORIES, HELD_OUT_DEFECTS
    from vip2scan.model.data.synthetic import make_sample
    from vip2scan.model.images import to_batch
    from vip2scan.model.metrics.peaks import half_patch_reach, peak_on_defect

    detector = load_detector(ModelSpec("embedded"))
    size = detector.image_size
    samples = [make_sample(c, d, size, 7000 + i) for i, (c, d) in
               enumerate((c, d) for c in HELD_OUT_CATEGORIES for d in HELD_OUT_DEFECTS for _ in range(2))]
    images = np.stack([s[0] for s in samples])
    masks = np.stack([s[1] > 127 for s in samples])
    with torch.inference_mode():
        _, maps = detector(to_batch(list(images)))
    maps = maps.numpy()
    reach = half_patch_reach(detector.config.patch_size, size, size, size)
    on_defect = np.mean([peak_on_defect(m, a, reach) for m, a in zip(masks, maps)])
    assert on_defect > 0.5, on_defect
    assert roc_auc_score(masks.ravel(), maps.ravel()) >= 0.9


def _short_settings():
    from vip2scan.model.pretraining.recipe import RecipeSettings

    settings = RecipeSettings()
    settings.pretrain.steps, settings.pretrain.batch_size, settings.pretrain.warmup = 3, 8, 1
    settings.head.epochs, settings.head.good_per_category, settings.head.defects_per_kind = 1, 1, 1
    settings.calibration.good_per_category, settings.calibration.defects_per_kind = 1, 1
    settings.eval.good_per_category, settings.eval.defects_per_kind = 2, 1
    return settings


@pytest.mark.slow
def test_a_shortened_rebuild_writes_a_loadable_checkpoint_with_true_provenance(tmp_path) -> None:
    from vip2scan.model.detector import Detector
    from vip2scan.model.pretraining.recipe import build_embedded

    out = tmp_path / "rebuilt"
    provenance = build_embedded(out, _short_settings(), "vip2scan train-embedded --steps 3", say=lambda _: None)

    assert (out / embedded.PROVENANCE_FILE).read_text() == json.dumps(provenance, indent=2) + "\n"
    assert embedded.file_hashes(out) == provenance["sha256"]
    assert provenance["data"]["pretrain_images"] == 24
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "peak_inside_defect", "peak_near_defect"):
        assert 0.0 <= provenance["held_out"][key] <= 1.0
    # The head names its backbone by reference; loaded next to this build's backbone file, the
    # model is the one the provenance names (the digest check refuses any other backbone).
    detector = Detector.from_checkpoint(str(out / embedded.HEAD_DIR),
                                        overrides={"weights": str(out / embedded.BACKBONE_FILE)})
    assert detector.model_id == provenance["model_id"]
    assert detector.config.weights_digest


@pytest.mark.slow
def test_the_same_seeds_rebuild_the_same_metrics(tmp_path) -> None:
    """Reproducibility: the data is a pure function of (seed, step) and every initialisation is
    seeded, so two rebuilds reach the same held-out metrics within 0.01. (Not the same bytes:
    multi-threaded CPU kernels add floats in varying order.)"""
    from vip2scan.model.pretraining.recipe import build_embedded

    first = build_embedded(tmp_path / "a", _short_settings(), "first", say=lambda _: None)
    second = build_embedded(tmp_path / "b", _short_settings(), "second", say=lambda _: None)
    assert first["settings"] == second["settings"]
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        assert abs(first["held_out"][key] - second["held_out"][key]) <= 0.01, key
