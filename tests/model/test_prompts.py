"""ICA: prompt token layout, EOT index, meta-net added to the cls tokens."""

import open_clip
import torch

from vip2scan.model.prompts import ImageConditionedPrompts, prompt_sentence


def _tok():
    return open_clip.get_tokenizer("vip2-tiny")


def test_sentence_and_token_layout(tiny):
    assert prompt_sentence(7, "good", 3) == "X X X X X X X good X X X"
    ica = tiny.ica
    tok = _tok()
    x_id, good_id, dmg_id = (tok.encode(w)[0] for w in ("X", "good", "damaged"))
    sot, eot = tok.sot_token_id, tok.eot_token_id
    pos, neg = ica.tokenized_prompts_pos[0].tolist(), ica.tokenized_prompts_neg[0].tolist()
    assert pos[:13] == [sot] + [x_id] * 7 + [good_id] + [x_id] * 3 + [eot]
    assert neg[:13] == [sot] + [x_id] * 7 + [dmg_id] + [x_id] * 3 + [eot]
    assert set(pos[13:]) == {0}
    assert ica.eot_index.tolist() == [12, 12]
    assert ica.token_suffix_pos.shape == (1, 77 - 2 - 7 - 3, 128)


def test_prompt_embeddings_layout(tiny):
    ica, bb = tiny.ica, tiny.backbone
    g = torch.nn.functional.normalize(torch.randn(2, 192), dim=-1)
    with torch.no_grad():
        prompts, eot = ica(g)
        emb_pos = bb.embed_tokens(ica.tokenized_prompts_pos)[0]
        emb_neg = bb.embed_tokens(ica.tokenized_prompts_neg)[0]
    assert prompts.shape == (2, 2, 77, 128)
    for i in range(2):
        for side, ctx, emb in ((0, ica.ctx_pos, emb_pos), (1, ica.ctx_neg, emb_neg)):
            p = prompts[i, side]
            torch.testing.assert_close(p[0], emb[0])          # SOS
            torch.testing.assert_close(p[1:8], ctx)           # learnable ctx
            torch.testing.assert_close(p[8], emb[8])          # state word
            torch.testing.assert_close(p[12:], emb[12:])      # EOT + padding
    # Shared cls tokens: identical in both prompts, different per image.
    torch.testing.assert_close(prompts[:, 0, 9:12], prompts[:, 1, 9:12])
    assert not torch.allclose(prompts[0, 0, 9:12], prompts[1, 0, 9:12])


def test_meta_net_added_to_cls_tokens():
    torch.manual_seed(0)
    e, dt = 16, 12
    ica = ImageConditionedPrompts(embed_dim=e, text_width=dt, context_length=20, n_ctx=2, n_cls=3)
    g = torch.randn(4, e)
    with torch.no_grad():
        prompts, _ = ica(g)
    for i, fc in enumerate(ica.cls_prompter.fc):
        w1, b1, w2, b2 = fc[0].weight, fc[0].bias, fc[2].weight, fc[2].bias
        assert w1.shape == (e // 2, e) and w2.shape == (dt, e // 2)
        a = torch.relu((g + ica.cls_prompter.bias) @ w1.T + b1) @ w2.T + b2  # o_i(g + bias)
        expected = ica.cls_ctx[i] + a                                         # z_i = o_i + a_i
        torch.testing.assert_close(prompts[:, 0, 1 + 2 + 1 + i], expected)
        torch.testing.assert_close(prompts[:, 1, 1 + 2 + 1 + i], expected)


def test_released_quirk_reproduced_by_buffers(tiny):
    """The normal prompt's fixed parts come from the buffers, so a checkpoint that stores
    'damaged' there (the released quirk) reproduces it."""
    import copy

    ica = copy.deepcopy(tiny.ica)
    with torch.no_grad():
        ica.token_middle_pos.copy_(ica.token_middle_neg)
        prompts, _ = ica(torch.randn(1, 192))
    torch.testing.assert_close(prompts[0, 0, 8], prompts[0, 1, 8])
