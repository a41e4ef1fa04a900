"""Backbone: our forward against open_clip's own implementation, pos-embed interpolation."""

import pytest
import torch
import torch.nn.functional as F

from vip2scan.model.backbone import build_backbone, create_clip, interpolate_pos_embed


@pytest.fixture(scope="module")
def clip_and_backbone():
    clip, digest = create_clip("vip2-tiny", None, seed=0)
    from vip2scan.model.backbone import Backbone

    return clip, Backbone(clip, (2, 3, 5, 6))


def test_pos_embed_interpolation_matches_f_interpolate():
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(1 + 24 * 24, 32, generator=g)
    out = interpolate_pos_embed(pos, (37, 37))
    grid = pos[1:].reshape(1, 24, 24, 32).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(37, 37), mode="bilinear", align_corners=False)
    ref = ref.permute(0, 2, 3, 1).reshape(37 * 37, 32)
    assert out.shape == (1 + 1369, 32)
    torch.testing.assert_close(out[0], pos[0], rtol=0, atol=0)  # class position untouched
    torch.testing.assert_close(out[1:], ref, rtol=0, atol=0)
    # and it is not bicubic / align_corners=True
    other = F.interpolate(grid, size=(37, 37), mode="bicubic", align_corners=False)
    assert not torch.allclose(out[1:], other.permute(0, 2, 3, 1).reshape(1369, 32))
    assert interpolate_pos_embed(pos, (24, 24)) is pos


def test_seeded_random_init_is_deterministic():
    a, _ = create_clip("vip2-tiny", None, seed=0)
    b, _ = create_clip("vip2-tiny", None, seed=0)
    c, _ = create_clip("vip2-tiny", None, seed=1)
    pa, pb, pc = (m.visual.transformer.resblocks[0].attn.in_proj_weight for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_patch_tokens_and_global_match_open_clip(clip_and_backbone):
    clip, bb = clip_and_backbone
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        glob, patches, grid = bb.forward_image(x)
        ref = clip.visual.forward_intermediates(x, indices=[1, 2, 4, 5], normalize_intermediates=True,
                                                output_fmt="NLC", output_extra_tokens=True)
        last = clip.visual.forward_intermediates(x, indices=[5], output_fmt="NLC", output_extra_tokens=True)
    assert grid == (14, 14)
    assert len(patches) == 4 and all(p.shape == (2, 196, 192) for p in patches)
    for ours, theirs in zip(patches, ref["image_intermediates"]):
        torch.testing.assert_close(ours, theirs @ clip.visual.proj, rtol=1e-5, atol=1e-5)
    cls_final = last["image_intermediates_prefix"][0][:, 0]  # final block, before ln_post
    torch.testing.assert_close(glob, F.normalize(cls_final @ clip.visual.proj, dim=-1), rtol=1e-5, atol=1e-5)
    # The ViP2 global feature skips ln_post: it differs from CLIP's image embedding.
    assert not torch.allclose(glob, F.normalize(clip.encode_image(x), dim=-1), atol=1e-3)


def test_other_input_size_interpolates_without_mutating(clip_and_backbone):
    _, bb = clip_and_backbone
    before = bb.visual.positional_embedding.detach().clone()
    with torch.no_grad():
        _, patches, grid = bb.forward_image(torch.randn(1, 3, 320, 320))
    assert grid == (20, 20) and patches[0].shape == (1, 400, 192)
    assert torch.equal(bb.visual.positional_embedding, before)


def test_text_tower_with_embeddings_matches_encode_text(clip_and_backbone):
    clip, bb = clip_and_backbone
    import open_clip

    tokens = open_clip.get_tokenizer("vip2-tiny")(["a photo of a damaged bottle", "good"])
    with torch.no_grad():
        ours = bb.forward_text(bb.embed_tokens(tokens), tokens.argmax(-1))
        theirs = clip.encode_text(tokens)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_text_tower_is_causal_and_passes_gradients(clip_and_backbone):
    _, bb = clip_and_backbone
    emb = torch.randn(1, 77, bb.text_width, requires_grad=True)
    out = bb.forward_text(emb, torch.tensor([5]))
    out.sum().backward()
    # Positions after the EOT cannot influence it (causal mask); positions up to it do.
    assert emb.grad[0, 6:].abs().max() == 0
    assert emb.grad[0, :6].abs().sum(-1).gt(0).all()
    assert all(p.grad is None for p in bb.parameters())


def test_backbone_is_frozen():
    bb, digest = build_backbone("vip2-tiny", (2, 3, 5, 6))
    assert digest is None
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert not bb.training


def test_unknown_pretrained_tag_refused_clearly():
    from vip2scan.model import CheckpointError

    with pytest.raises(CheckpointError, match="could not get OpenCLIP pretrained weights 'no-such-tag'"):
        create_clip("vip2-tiny", "no-such-tag")
