"""Checkpoints: our format round trip (local, file://, s3), released .pth layout, and refusals."""

import io
import json
import os
import pickle
import warnings

import pytest
import torch
from safetensors.torch import save_file

from vip2scan.model import CheckpointError, Detector, DetectorConfig, convert_openai_weights
from vip2scan.model.backbone import create_clip
from vip2scan.model.weights import sha256_uri


def _same(a, b, images):
    sa, ma = a(images)
    sb, mb = b(images)
    torch.testing.assert_close(sa, sb, rtol=0, atol=0)
    torch.testing.assert_close(ma, mb, rtol=0, atol=0)


def _perturb(det, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(det.ica.parameters()) + list(det.fgp.parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    det.refresh_model_id()
    return det


# --------------------------------------------------------------------- our format
def test_round_trip_local_and_file_uri(fresh_tiny, images, tmp_path):
    det = _perturb(fresh_tiny)
    det.set_thresholds(0.4, 0.55)
    mid = det.save_checkpoint(str(tmp_path / "ck"))
    assert sorted(os.listdir(tmp_path / "ck")) == ["config.json", "weights.safetensors"]
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    for key in ("backbone", "weights", "weights_digest", "image_size", "blocks", "n_ctx", "n_cls", "top_k",
                "sigma", "state_words", "score_variant", "image_threshold", "pixel_threshold", "model_id"):
        assert key in meta
    assert meta["model_id"] == mid == det.model_id and meta["pixel_threshold"] == 0.55
    for uri in (str(tmp_path / "ck"), f"file://{tmp_path}/ck"):
        back = Detector.from_checkpoint(uri)
        assert back.model_id == mid and back.config == det.config
        _same(det, back, images[:2])


def test_round_trip_s3(fresh_tiny, images, s3_server, s3_bucket):
    det = _perturb(fresh_tiny, seed=4)
    uri = f"s3://{s3_bucket}/models/ck"
    det.save_checkpoint(uri, storage_options=s3_server.storage_options)
    back = Detector.from_checkpoint(uri, storage_options=s3_server.storage_options)
    assert back.model_id == det.model_id
    _same(det, back, images[:2])


def test_unknown_backbone_in_config_refused(tiny, tmp_path):
    tiny.save_checkpoint(str(tmp_path / "ck"))
    p = tmp_path / "ck" / "config.json"
    meta = json.loads(p.read_text())
    meta["backbone"] = "ViT-Q-99"
    p.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown backbone 'ViT-Q-99'"):
        Detector.from_checkpoint(str(tmp_path / "ck"))


def test_edited_config_detected_by_model_id(tiny, tmp_path):
    tiny.save_checkpoint(str(tmp_path / "ck"))
    p = tmp_path / "ck" / "config.json"
    meta = json.loads(p.read_text())
    meta["sigma"] = 1.0
    p.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="model_id"):
        Detector.from_checkpoint(str(tmp_path / "ck"))


def test_directory_without_config_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        Detector.from_checkpoint(str(tmp_path / "empty"))


# ------------------------------------------------------------- released .pth layout
def _released_tensors(tiny, seed=7):
    """Known tensors in the released key layout (spec shapes), for the tiny dimensions."""
    g = torch.Generator().manual_seed(seed)
    e, dt, n_ctx, n_cls = 192, 128, 7, 3

    def r(*shape):
        return 0.05 * torch.randn(*shape, generator=g)

    pl = {"ctx_pos": r(n_ctx, dt), "ctx_neg": r(n_ctx, dt), "cls_ctx": r(n_cls, dt), "cls_prompter.bias": r(1, e)}
    for i in range(n_cls):
        pl |= {f"cls_prompter.fc.{i}.0.weight": r(e // 2, e), f"cls_prompter.fc.{i}.0.bias": r(e // 2),
               f"cls_prompter.fc.{i}.2.weight": r(dt, e // 2), f"cls_prompter.fc.{i}.2.bias": r(dt)}
    ica = tiny.ica
    for side in ("pos", "neg"):
        # the released quirk: both prompts' fixed parts come from the "damaged" sentence
        pl[f"token_prefix_{side}"] = ica.token_prefix_neg.clone()
        pl[f"token_middle_{side}"] = ica.token_middle_neg.clone()
        pl[f"token_suffix_{side}"] = ica.token_suffix_neg.clone()
        pl[f"tokenized_prompts_{side}"] = ica.tokenized_prompts_neg.clone().int()
    zt = {"prompt_temp_l1": torch.tensor(0.07)}
    for name in ("q_proj_pre", "k_proj_pre_1", "v_proj_pre_1", "proj_post_t"):
        zt[f"{name}.weight"] = r(e, e, 1)
        zt[f"{name}.bias"] = r(e)
    return pl, zt


def _set_by_hand(det, pl, zt):
    """Put the known tensors into a detector without going through the loader."""
    with torch.no_grad():
        ica = det.ica
        ica.ctx_pos.copy_(pl["ctx_pos"]), ica.ctx_neg.copy_(pl["ctx_neg"]), ica.cls_ctx.copy_(pl["cls_ctx"])
        ica.cls_prompter.bias.copy_(pl["cls_prompter.bias"])
        for i, fc in enumerate(ica.cls_prompter.fc):
            for j in (0, 2):
                fc[j].weight.copy_(pl[f"cls_prompter.fc.{i}.{j}.weight"])
                fc[j].bias.copy_(pl[f"cls_prompter.fc.{i}.{j}.bias"])
        for side in ("pos", "neg"):
            for part in ("prefix", "middle", "suffix"):
                getattr(ica, f"token_{part}_{side}").copy_(pl[f"token_{part}_{side}"])
            getattr(ica, f"tokenized_prompts_{side}").copy_(pl[f"tokenized_prompts_{side}"])
        for name in ("q_proj_pre", "k_proj_pre_1", "v_proj_pre_1", "proj_post_t"):
            getattr(det.fgp, name).weight.copy_(zt[f"{name}.weight"])
            getattr(det.fgp, name).bias.copy_(zt[f"{name}.bias"])


def test_released_pth_loads_and_matches(tiny, fresh_tiny, images, tmp_path):
    pl, zt = _released_tensors(tiny)
    path = tmp_path / "mvtec_train_epoch_10.pth"
    torch.save({"prompt_learner": pl, "Zero_try": zt}, path)
    with pytest.warns(UserWarning, match="prompt_temp_l1"):
        det = Detector.from_checkpoint(str(path), config=DetectorConfig(backbone="vip2-tiny"))
    _set_by_hand(fresh_tiny, pl, zt)
    _same(det, fresh_tiny, images[:2])
    torch.testing.assert_close(det.ica.ctx_pos, pl["ctx_pos"])
    # and the result saves / reloads in our format unchanged
    det.save_checkpoint(str(tmp_path / "ours"))
    _same(det, Detector.from_checkpoint(str(tmp_path / "ours")), images[:2])


def test_released_pth_singleton_dims_and_extra_keys(tiny, tmp_path):
    pl, zt = _released_tensors(tiny)
    pl["ctx_pos"] = pl["ctx_pos"].unsqueeze(0)  # (1, n_ctx, D) as some exports store it
    zt["patch_selecter.weight"] = torch.zeros(3)
    torch.save({"prompt_learner": pl, "Zero_try": zt, "epoch": 10}, tmp_path / "a.pth")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        det = Detector.from_checkpoint(str(tmp_path / "a.pth"), config=DetectorConfig())
    text = " ".join(str(x.message) for x in w)
    assert "patch_selecter" in text and "epoch" in text and "prompt_temp_l1" in text
    torch.testing.assert_close(det.ica.ctx_pos, pl["ctx_pos"][0])


def test_released_pth_missing_key_and_shape_mismatch_refused(tiny, tmp_path):
    pl, zt = _released_tensors(tiny)
    zt_missing = {k: v for k, v in zt.items() if k != "q_proj_pre.bias"}
    torch.save({"prompt_learner": pl, "Zero_try": zt_missing}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=r"missing key.*q_proj_pre\.bias"):
        Detector.from_checkpoint(str(tmp_path / "m.pth"), config=DetectorConfig())
    bad = dict(pl, **{"cls_prompter.bias": torch.zeros(1, 64)})
    torch.save({"prompt_learner": bad, "Zero_try": zt}, tmp_path / "s.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatch for prompt_learner\.cls_prompter\.bias"):
        Detector.from_checkpoint(str(tmp_path / "s.pth"), config=DetectorConfig())
    torch.save({"Zero_try": zt}, tmp_path / "n.pth")
    with pytest.raises(CheckpointError, match="prompt_learner"):
        Detector.from_checkpoint(str(tmp_path / "n.pth"), config=DetectorConfig())


# ----------------------------------------------------------------------- refusals
class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):  # unpickling this would create the file
        return (open, (self.target, "w"))


@pytest.mark.parametrize("container", ["torch_zip", "legacy_pickle"])
def test_malicious_pickle_refused_without_executing(tmp_path, container):
    target = str(tmp_path / "pwned")
    obj = {"prompt_learner": {"x": _Payload(target)}, "Zero_try": {}}
    path = tmp_path / "evil.pth"
    if container == "torch_zip":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    assert not os.path.exists(target)
    with pytest.raises(CheckpointError, match="code execution"):
        Detector.from_checkpoint(str(path), config=DetectorConfig())
    assert not os.path.exists(target)
    with pytest.raises(CheckpointError, match="code execution"):
        Detector.from_config(DetectorConfig(weights=str(path)))
    assert not os.path.exists(target)
    # Control: the payload is real (plain pickle would have executed it).
    if container == "legacy_pickle":
        with open(path, "rb") as f:
            pickle.load(f)
        assert os.path.exists(target)


@pytest.fixture(scope="module")
def torchscript_clip(tmp_path_factory):
    clip, _ = create_clip("vip2-tiny", None, seed=5)
    path = tmp_path_factory.mktemp("ts") / "ViT-tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(clip), str(path))
    return clip, path


def test_torchscript_refused_with_hint(torchscript_clip):
    _, path = torchscript_clip
    with pytest.raises(CheckpointError, match="convert_openai_weights"):
        Detector.from_config(DetectorConfig(weights=str(path)))
    with pytest.raises(CheckpointError, match="convert_openai_weights"):
        Detector.from_checkpoint(str(path), config=DetectorConfig())


@pytest.mark.slow  # a TorchScript conversion (jobs/test_convert.py covers the command)
def test_convert_openai_weights_then_load(torchscript_clip, tmp_path, images):
    clip, path = torchscript_clip
    dst = str(tmp_path / "tiny.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        digest = convert_openai_weights(str(path), dst)
    assert digest == sha256_uri(dst)
    det = Detector.from_config(DetectorConfig(weights=dst, seed=5))
    assert det.config.weights_digest == digest
    torch.testing.assert_close(det.backbone.visual.conv1.weight, clip.visual.conv1.weight, rtol=0, atol=0)
    # the converted file holds exactly the seed-5 random backbone
    _same(det, Detector.from_config(DetectorConfig(seed=5)), images[:1])


# ----------------------------------------------------------------- backbone weights
@pytest.mark.slow  # builds and loads backbones from files and S3
def test_backbone_weights_from_files_and_s3(tmp_path, s3_server, s3_bucket, images):
    clip, _ = create_clip("vip2-tiny", None, seed=5)
    sd = {k: v.contiguous() for k, v in clip.state_dict().items()}
    st_path, pt_path = str(tmp_path / "w.safetensors"), str(tmp_path / "w.pt")
    save_file(sd, st_path)
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, pt_path)
    a = Detector.from_config(DetectorConfig(weights=st_path))
    b = Detector.from_config(DetectorConfig(weights=pt_path))
    assert a.config.weights_digest == sha256_uri(st_path)
    torch.testing.assert_close(a.backbone.visual.proj, clip.visual.proj, rtol=0, atol=0)
    _same(a, b, images[:1])
    fs = s3_server.filesystem()
    fs.put(st_path, f"{s3_bucket}/w.safetensors")
    uri = f"s3://{s3_bucket}/w.safetensors"
    c = Detector.from_config(DetectorConfig(weights=uri), storage_options=s3_server.storage_options)
    assert c.config.weights_digest == a.config.weights_digest
    assert c.model_id == a.model_id  # the id follows the content, not the location
    _same(a, c, images[:1])
    # checkpoint remembers the weight source and checks its digest on load
    a.save_checkpoint(str(tmp_path / "ck"))
    _same(a, Detector.from_checkpoint(str(tmp_path / "ck")), images[:1])
    # the same weights from another place: digest checked, model_id unchanged
    moved = Detector.from_checkpoint(str(tmp_path / "ck"), overrides={"weights": uri},
                                     storage_options=s3_server.storage_options)
    assert moved.model_id == a.model_id and moved.config.weights == uri
    # a full replacement config: here the paper score variant on the same weights
    paper = Detector.from_checkpoint(str(tmp_path / "ck"), config=a.config.replace(score_variant="paper"))
    assert paper.config.score_variant == "paper" and paper.model_id != a.model_id
    torch.testing.assert_close(paper(images[:1])[1], a(images[:1])[1], rtol=0, atol=0)
    save_file({k: v + 1 if k == "visual.proj" else v for k, v in sd.items()}, st_path)
    with pytest.raises(CheckpointError, match="digest"):
        Detector.from_checkpoint(str(tmp_path / "ck"))


def test_backbone_weights_that_do_not_fit_refused(tmp_path):
    save_file({"visual.proj": torch.zeros(3, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="do not match"):
        Detector.from_config(DetectorConfig(weights=str(tmp_path / "bad.safetensors")))


# ------------------------------------------------------------------- the override rule
def test_a_new_image_size_rederives_defaults_unless_pinned(fresh_tiny, tmp_path):
    from vip2scan.model.config import default_sigma, default_top_k

    fresh_tiny.save_checkpoint(str(tmp_path / "derived"))
    saved = fresh_tiny.config
    det = Detector.from_checkpoint(str(tmp_path / "derived"), overrides={"image_size": 112})
    assert det.config.image_size == 112
    assert det.config.top_k == default_top_k(112, saved.patch_size) != saved.top_k
    assert det.config.sigma == pytest.approx(default_sigma(112))
    assert det.config.blocks == saved.blocks and det.config.fgp_heads == saved.fgp_heads
    # values the trainer chose on purpose (not the default for the saved size) are kept
    pinned = Detector.from_config(saved.replace(top_k=5, sigma=2.5))
    pinned.save_checkpoint(str(tmp_path / "pinned"))
    det = Detector.from_checkpoint(str(tmp_path / "pinned"), overrides={"image_size": 112})
    assert (det.config.top_k, det.config.sigma) == (5, 2.5)
    # an explicit override always wins, and None means "as saved"
    det = Detector.from_checkpoint(str(tmp_path / "pinned"),
                                   overrides={"image_size": 112, "top_k": 3, "backbone": None})
    assert det.config.top_k == 3 and det.config.backbone == saved.backbone


def test_unknown_override_names_are_refused(fresh_tiny, tmp_path):
    fresh_tiny.save_checkpoint(str(tmp_path / "ck"))
    with pytest.raises(ValueError, match="imag_size"):
        Detector.from_checkpoint(str(tmp_path / "ck"), overrides={"imag_size": 112})
