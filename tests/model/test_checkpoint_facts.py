"""The torch-free checkpoint reader a scan's driver plans with (model/checkpoint_facts.py)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys

import pytest

from vip2scan.model.facts import (CheckpointFactsError, read_checkpoint_facts,
                                             safetensors_header)


def test_facts_agree_with_the_loaded_detector(tiny_checkpoint):
    from vip2scan.model.detector import Detector

    facts = read_checkpoint_facts(tiny_checkpoint)
    detector = Detector.from_checkpoint(tiny_checkpoint)
    assert facts.model_id == detector.model_id
    assert facts.image_size == detector.image_size == 224
    assert facts.backbone == "vip2-tiny"
    assert facts.image_threshold is None and facts.pixel_threshold is None
    assert facts.tensors == len(detector.ica.state_dict()) + len(detector.fgp.state_dict())


def test_saved_thresholds_are_read(checkpoint_copy):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config.update(image_threshold=0.61, pixel_threshold=0.42)
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    facts = read_checkpoint_facts(str(checkpoint_copy))
    assert (facts.image_threshold, facts.pixel_threshold) == (0.61, 0.42)


def test_reading_facts_does_not_import_torch(tiny_checkpoint):
    code = ("import sys\n"
            "from vip2scan.model.factory import ModelSpec, model_facts\n"
            f"facts = model_facts(ModelSpec({tiny_checkpoint!r}))\n"
            "print(facts.model_id, 'torch' in sys.modules, 'open_clip' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    model_id, torch_loaded, open_clip_loaded = out.stdout.split()
    assert model_id == read_checkpoint_facts(tiny_checkpoint).model_id
    assert (torch_loaded, open_clip_loaded) == ("False", "False")


def test_truncated_weights_are_refused(checkpoint_copy):
    weights = checkpoint_copy / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointFactsError, match="outside the file"):
        read_checkpoint_facts(str(checkpoint_copy))


def test_a_header_longer_than_the_file_is_refused(checkpoint_copy):
    weights = checkpoint_copy / "weights.safetensors"
    weights.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointFactsError, match="header length"):
        safetensors_header(str(weights))


def test_zeroed_weights_are_refused(checkpoint_copy):
    (checkpoint_copy / "weights.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointFactsError):
        read_checkpoint_facts(str(checkpoint_copy))


def test_weights_of_another_model_are_refused(checkpoint_copy, tmp_path):
    from vip2scan.model.config import DetectorConfig
    from vip2scan.model.detector import Detector

    other = tmp_path / "other"
    Detector.from_config(DetectorConfig(seed=1)).save_checkpoint(str(other))
    shutil.copy(other / "weights.safetensors", checkpoint_copy / "weights.safetensors")
    with pytest.raises(CheckpointFactsError, match="files edited or mixed"):
        read_checkpoint_facts(str(checkpoint_copy))


def test_a_config_of_another_format_is_refused(checkpoint_copy):
    (checkpoint_copy / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointFactsError, match="not a vip2scan-checkpoint file"):
        read_checkpoint_facts(str(checkpoint_copy))


def test_facts_from_s3(s3_server, s3_bucket, tiny_checkpoint):
    fs = s3_server.filesystem()
    fs.put(tiny_checkpoint, f"{s3_bucket}/models/tiny", recursive=True)
    facts = read_checkpoint_facts(f"s3://{s3_bucket}/models/tiny", s3_server.storage_options)
    assert facts.model_id == read_checkpoint_facts(tiny_checkpoint).model_id
