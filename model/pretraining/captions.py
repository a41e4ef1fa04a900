"""Captions for generated images: what the product is and what condition it is in.

The contrastive objective pairs each image with ``caption(category, defect)``; the dense
objective compares every patch with the two ``STATE_PROMPTS``. Those have the shape of ViP2's
prompts, ``[7 context tokens] <state word> [3 class tokens]`` with its state words "good" /
"damaged", and name no product, so the "damaged" direction the backbone learns is shared by
all products (the unseen ones included) and the head can start from exactly these sentences
(:mod:`.head_init`).
"""

from __future__ import annotations

NOUNS = {
    "carpet_like": "woven carpet", "grid_like": "wire mesh", "wood_like": "wood surface",
    "leather_like": "leather surface", "fabric_like": "woven fabric", "marble_like": "marble slab",
    "disc": "metal disc", "tile": "ceramic tile", "bottle_top": "bottle cap", "hexnut": "hex nut",
    "pill": "capsule pill",
}
DEFECT_PHRASES = {
    "scratch": "a scratch", "blob": "a stain", "cutpaste": "a misplaced patch",
    "colour": "a discoloured area", "crack": "a crack", "spots": "dirt spots",
}
PROMPT_CONTEXT = "a photo of the surface of a"  # ViP2's n_ctx = 7 tokens
PROMPT_CLASS = "industrial product part"  # ViP2's n_cls = 3 tokens
STATE_WORDS = ("good", "damaged")
STATE_PROMPTS = tuple(f"{PROMPT_CONTEXT} {word} {PROMPT_CLASS}" for word in STATE_WORDS)


def caption(category: str, defect: str | None) -> str:
    """'a photo of a flawless ceramic tile' or 'a photo of a ceramic tile with a stain'."""
    noun = NOUNS[category]
    if defect is None:
        return f"a photo of a flawless {noun}"
    return f"a photo of a {noun} with {DEFECT_PHRASES[defect]}"
