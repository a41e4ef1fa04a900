"""A warm start for the ViP2 head on a backbone we pretrained ourselves.

CoOp-style context initialisation: ICA's learnable context and class tokens start as the token
embeddings of the words of the pretraining's state prompts, and its meta-net starts at zero,
so before any head training the two prompts *are* the sentences the backbone's patch tokens
were taught to align with. FGP starts as scaled identity maps, so each prompt first attends
to the patches most like it (at CLIP's temperature) and passes their mean on. Training then
moves both with the paper's losses; nothing here changes what the head computes.
"""

from __future__ import annotations

import torch

from ..backbone import tokenizer_for
from ..detector import Detector
from .captions import PROMPT_CLASS, PROMPT_CONTEXT

ATTENTION_SCALE = 1 / 0.07  # FGP's attention is unscaled: start it as sharp as CLIP's logits


def _word_embeddings(detector: Detector, text: str, count: int) -> torch.Tensor:
    tokens = tokenizer_for(detector.config.backbone)([text])[0]
    words = tokens[1:int(tokens.argmax())]  # between [SOS] and [EOT]
    if len(words) != count:
        raise ValueError(f"{text!r} is {len(words)} tokens, the head expects {count}")
    return detector.backbone.embed_tokens(words[None].long())[0].float()


@torch.no_grad()
def warm_start_head(detector: Detector) -> Detector:
    """Set ``detector``'s ICA and FGP to the warm start described above (in place)."""
    ica, fgp = detector.ica, detector.fgp
    context = _word_embeddings(detector, PROMPT_CONTEXT, ica.n_ctx)
    ica.ctx_pos.copy_(context)
    ica.ctx_neg.copy_(context)
    ica.cls_ctx.copy_(_word_embeddings(detector, PROMPT_CLASS, ica.n_cls))
    for branch in ica.cls_prompter.fc:
        branch[2].weight.zero_()
        branch[2].bias.zero_()
    eye = torch.eye(fgp.width).unsqueeze(-1)
    for conv, scale in ((fgp.q_proj_pre, ATTENTION_SCALE), (fgp.k_proj_pre_1, 1.0),
                        (fgp.v_proj_pre_1, 1.0), (fgp.proj_post_t, 1.0)):
        conv.weight.copy_(eye * scale)
        conv.bias.zero_()
    detector.refresh_model_id()
    return detector
