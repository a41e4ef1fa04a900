"""FGP: head count, unscaled softmax, output projection, L2-normalised output."""

import math

import pytest
import torch
import torch.nn.functional as F

from vip2scan.model.fgp import FineGrainedPerception


def _manual(fgp: FineGrainedPerception, text, patches, scale=1.0):
    def lin(conv, x):
        return x @ conv.weight[:, :, 0].T + conv.bias

    q, k, v = lin(fgp.q_proj_pre, text), lin(fgp.k_proj_pre_1, patches), lin(fgp.v_proj_pre_1, patches)
    d = fgp.width // fgp.heads
    heads = []
    for h in range(fgp.heads):
        sl = slice(h * d, (h + 1) * d)
        a = torch.softmax(scale * q[..., sl] @ k[..., sl].transpose(-1, -2), dim=-1)
        heads.append(a @ v[..., sl])
    out = lin(fgp.proj_post_t, torch.cat(heads, dim=-1))
    return out / out.norm(dim=-1, keepdim=True)


def test_head_count_and_shapes(tiny):
    assert tiny.fgp.heads == 2 and tiny.fgp.width == 192
    big = FineGrainedPerception(768, 8)
    assert big.q_proj_pre.weight.shape == (768, 768, 1) and big.proj_post_t.bias.shape == (768,)
    with pytest.raises(ValueError):
        FineGrainedPerception(768, 7)


@pytest.mark.parametrize("width,heads", [(192, 2), (96, 8)])
def test_matches_manual_unscaled_attention(width, heads):
    torch.manual_seed(0)
    fgp = FineGrainedPerception(width, heads)
    with torch.no_grad():  # larger weights so that a 1/sqrt(d) scale would matter
        for conv in (fgp.q_proj_pre, fgp.k_proj_pre_1):
            conv.weight.mul_(8)
    text = F.normalize(torch.randn(3, 2, width), dim=-1)
    patches = F.normalize(torch.randn(3, 50, width), dim=-1)
    with torch.no_grad():
        out = fgp(text, patches)
        ref = _manual(fgp, text, patches, scale=1.0)
        scaled = _manual(fgp, text, patches, scale=1 / math.sqrt(width // heads))
        one_head = FineGrainedPerception(width, 1)
        one_head.load_state_dict(fgp.state_dict())
        single = one_head(text, patches)
    assert out.shape == (3, 2, width)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, scaled, atol=1e-3)   # would fail if scaled by 1/sqrt(d)
    assert not torch.allclose(out, single, atol=1e-3)   # head count matters
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3, 2))
