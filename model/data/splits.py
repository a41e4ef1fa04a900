"""Which generated products and defects the embedded model may learn from, and which it
never sees until evaluation (zero-shot honesty, as the paper trains on one dataset and
tests on another).

Both the backbone's pretraining and the ViP2 head's training draw only from ``TRAIN_*``;
the held-out evaluation lake uses only ``HELD_OUT_*`` categories, and its defective images
carry only ``HELD_OUT_DEFECTS``.
"""

from __future__ import annotations

from .defects import ALL_DEFECTS
from .products import ALL_CATEGORIES

HELD_OUT_CATEGORIES = ("wood_like", "fabric_like", "hexnut")
HELD_OUT_DEFECTS = ("crack", "spots")
TRAIN_CATEGORIES = tuple(c for c in ALL_CATEGORIES if c not in HELD_OUT_CATEGORIES)
TRAIN_DEFECTS = tuple(d for d in ALL_DEFECTS if d not in HELD_OUT_DEFECTS)


def describe() -> dict[str, list[str]]:
    """The split as JSON-able lists (for provenance files and the docs)."""
    return {"train_categories": list(TRAIN_CATEGORIES), "train_defects": list(TRAIN_DEFECTS),
            "held_out_categories": list(HELD_OUT_CATEGORIES), "held_out_defects": list(HELD_OUT_DEFECTS)}
