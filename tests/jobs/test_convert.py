"""convert: a released .pth becomes our checkpoint; TorchScript only through convert --trust."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch


def test_released_pth_converts_to_a_checkpoint_with_the_same_head(converted_checkpoint, released_pth) -> None:
    from vip2scan.model.detector import Detector

    ran = converted_checkpoint.ran
    assert "wrote checkpoint" in ran.stdout and "vip2scan scan" in ran.stdout
    ckpt = Path(converted_checkpoint.checkpoint)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["backbone"] == "vip2-tiny"
    released = torch.load(released_pth, weights_only=True)
    loaded = Detector.from_checkpoint(str(ckpt))
    for name, tensor in released["prompt_learner"].items():
        torch.testing.assert_close(loaded.ica.state_dict()[name], tensor, rtol=0, atol=0)
    # (the S3 end-to-end tests scan with this converted checkpoint)


@pytest.fixture(scope="module")
def torchscript_clip(tmp_path_factory) -> Path:
    """An OpenAI-style TorchScript CLIP archive (tiny backbone, random weights)."""
    from vip2scan.model.backbone import create_clip

    clip, _ = create_clip("vip2-tiny", None, seed=5)
    path = tmp_path_factory.mktemp("torchscript") / "ViT-tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(clip), str(path))
    return path


@pytest.mark.slow  # builds a TorchScript CLIP (model/test_checkpoint.py refuses one fast)
def test_torchscript_is_refused_everywhere_but_convert_with_trust(cli, torchscript_clip, converted_checkpoint,
                                                                   tmp_path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    # scan refuses to load it as backbone weights (a runtime error: the file is the problem)
    refused = cli("scan", str(lake), "--out", str(tmp_path / "out"), "--checkpoint", converted_checkpoint.checkpoint,
                  "--weights", str(torchscript_clip), "--dry-run")
    assert refused.exit_code == 1
    assert len(refused.error_lines) == 1 and "TorchScript" in refused.error_lines[0]
    # convert without --trust is a usage error that says why
    dst = tmp_path / "tiny.safetensors"
    no_trust = cli("convert", str(torchscript_clip), str(dst))
    assert no_trust.exit_code == 2 and "--trust" in no_trust.stderr and not dst.exists()
    # with --trust: the notice is printed, with the file's digest, and the result loads safely
    converted = cli("convert", str(torchscript_clip), str(dst), "--trust")
    assert converted.exit_code == 0, converted.stderr
    assert "TRUST NOTICE" in converted.stderr and "sha256:" in converted.stderr
    assert dst.read_bytes()[8:9] == b"{"  # safetensors header

    from vip2scan.model.config import DetectorConfig
    from vip2scan.model.detector import Detector

    detector = Detector.from_config(DetectorConfig(weights=str(dst)))
    assert detector.config.weights_digest in converted.stdout
    # ... and scan accepts the converted file as backbone weights (a dry run lists and diffs only)
    (lake / "a.png").write_bytes(b"")
    dry = cli("scan", str(lake), "--out", str(tmp_path / "out"), "--checkpoint", converted_checkpoint.checkpoint,
              "--weights", str(dst), "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert "listed 1" in dry.stdout and "vip2scan query" not in dry.stdout


def test_converting_safetensors_or_garbage_is_refused(cli, tmp_path) -> None:
    from safetensors.torch import save_file

    st = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(2)}, str(st))
    ran = cli("convert", str(st), str(tmp_path / "dst"))
    assert ran.exit_code == 2 and "already safetensors" in ran.stderr
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 64)
    ran = cli("convert", str(junk), str(tmp_path / "dst"))
    assert ran.exit_code == 1 and len(ran.error_lines) == 1
