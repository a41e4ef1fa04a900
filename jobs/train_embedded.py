"""`vip2scan train-embedded`: rebuild the embedded checkpoint (``--checkpoint embedded``) from
nothing: pretrain the small ``vip2-synth`` CLIP on generated images, train a ViP2 head on
it, evaluate on held-out products and defect kinds, and write the shipped files with their
provenance (:mod:`vip2scan.model.pretraining.recipe`).

The defaults are the shipped build (about 35 minutes on 2 cores); ``make embedded`` runs them
into the source tree. ``--steps`` and friends shorten it (the tests run a few steps).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

EXAMPLE = ("Examples: vip2scan train-embedded --out model/embedded ; "
           "vip2scan train-embedded --out /tmp/quick --steps 5 --head-epochs 1")


def train_embedded(
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Where the files go (default: the installed package's embedded/ folder).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Pretraining steps.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=2, help="Pretraining batch size.")] = None,
    head_epochs: Annotated[Optional[int], typer.Option(min=1, help="Epochs of the ViP2 head's training.")] = None,
    head_good: Annotated[Optional[int], typer.Option(
        min=1, help="Normal images per product in the head's training set.")] = None,
    head_defects: Annotated[Optional[int], typer.Option(
        min=1, help="Images per product and defect kind in the head's training set.")] = None,
    eval_good: Annotated[Optional[int], typer.Option(
        min=1, help="Normal images per held-out product in the evaluation lake.")] = None,
    eval_defects: Annotated[Optional[int], typer.Option(
        min=1, help="Images per held-out product and defect kind in the evaluation lake.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Pretraining seed (data and initialisation).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch threads (the shipped build used 2).")] = 2,
) -> None:
    """Rebuild the embedded checkpoint from generated data (CPU, no downloads)."""
    from vip2scan.model.embedded import EMBEDDED_DIR
    from vip2scan.model.pretraining.recipe import RecipeSettings, build_embedded

    settings = RecipeSettings(threads=threads)
    for section, name, value in (("pretrain", "steps", steps), ("pretrain", "batch_size", batch_size),
                                 ("pretrain", "seed", seed), ("head", "epochs", head_epochs),
                                 ("head", "good_per_category", head_good),
                                 ("head", "defects_per_kind", head_defects),
                                 ("eval", "good_per_category", eval_good),
                                 ("eval", "defects_per_kind", eval_defects)):
        if value is not None:
            setattr(getattr(settings, section), name, value)
    target = out if out is not None else EMBEDDED_DIR
    command = " ".join(["vip2scan", "train-embedded"] + [shlex.quote(a) for a in sys.argv[2:]])
    provenance = build_embedded(target, settings, command, say=typer.echo)
    held_out = provenance["held_out"]
    typer.echo(f"wrote {target} (model_id {provenance['model_id']}) in {provenance['timings']['total_s']:.0f} s: "
               f"held-out image AUROC {held_out['image_auroc']:.3f}, pixel AUROC {held_out['pixel_auroc']:.3f}, "
               f"AUPRO {held_out['pixel_aupro']:.3f}")


def register(app: typer.Typer) -> None:
    app.command("train-embedded", epilog=EXAMPLE)(train_embedded)
