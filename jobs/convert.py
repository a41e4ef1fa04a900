"""`vip2scan convert SRC DST`: bring outside weights into the formats scan loads safely.

Two inputs, told apart by their content (not their name):
  * an OpenAI CLIP TorchScript archive (``ViT-L-14-336px.pt``): loading it runs code,
    so it needs ``--trust`` and prints what it is about to do; the result is a
    safetensors backbone file for ``scan --weights``;
  * a released ViP2-CLIP ``.pth`` (``prompt_learner`` + ``Zero_try``): read with
    ``torch.load(weights_only=True)`` and written as our checkpoint directory.
A plain backbone state dict (``.bin``/``.pth`` without those keys) becomes safetensors too.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Optional

import typer

from vip2scan.jobs.config import ConfigOption, storage_options_from_flags
from vip2scan.jobs.errors import UsageError
from vip2scan.jobs.storage import StorageOption

EXAMPLE = (
    "Examples: vip2scan convert ViT-L-14-336px.pt weights/vit-l-14-336.safetensors --trust ; "
    "vip2scan convert vip2clip_visa.pth ckpt/visa --weights weights/vit-l-14-336.safetensors"
)

TRUST_NOTICE = (
    "TRUST NOTICE: {src} is a TorchScript archive ({digest}). Loading it with torch.jit.load "
    "can execute code it contains. It is being loaded because you passed --trust; only do this "
    "for files from a source you trust (e.g. OpenAI's published CLIP checkpoints, checked "
    "against their published SHA256)."
)


def _is_released_pth(data: bytes) -> bool:
    from vip2scan.model.weights import safe_torch_load

    obj = safe_torch_load(data, what="source file")
    return isinstance(obj, dict) and "prompt_learner" in obj and "Zero_try" in obj


def convert(
    src: Annotated[str, typer.Argument(help="OpenAI CLIP TorchScript .pt or released ViP2-CLIP .pth (path or URI).")],
    dst: Annotated[str, typer.Argument(help="Output: a .safetensors file (backbone) or a checkpoint directory.")],
    trust: Annotated[bool, typer.Option(
        "--trust", help="Allow loading a TorchScript archive (it can run code). Needed for OpenAI .pt files.")] = False,
    backbone: Annotated[Optional[str], typer.Option(
        help="For a released .pth: the OpenCLIP backbone it was trained on "
             "(default ViT-L-14-336-quickgelu, OpenAI weights, 518 px).")] = None,
    weights: Annotated[Optional[str], typer.Option(
        help="For a released .pth: backbone weights (safetensors path/URI or OpenCLIP tag).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="For a released .pth: input size in pixels.")] = None,
    storage_option: StorageOption = None,
    config: ConfigOption = None,
) -> None:
    """Convert OpenAI CLIP TorchScript weights to safetensors, or a released ViP2-CLIP .pth to a checkpoint."""
    from vip2scan.model import weights as ckpt
    from vip2scan.model.files import read_bytes

    storage_options = storage_options_from_flags(storage_option)
    data = read_bytes(src, storage_options)
    kind = ckpt.sniff_format(data)
    if kind == "safetensors":
        raise UsageError(f"{src} is already safetensors: pass it to scan with --weights as it is")
    if kind == "unknown":
        raise ckpt.CheckpointError(f"{src}: not a TorchScript archive nor a torch checkpoint")

    if kind == "torchscript":
        if not trust:
            raise UsageError(f"{src} is a TorchScript archive, which can run code when loaded; "
                                   "re-run with --trust if it comes from a source you trust")
        typer.echo(TRUST_NOTICE.format(src=src, digest=ckpt.sha256_bytes(data)), err=True)
        del data  # the converter reads the file itself; do not hold two copies
        with warnings.catch_warnings():  # torch.jit's deprecation notice says nothing useful here
            warnings.simplefilter("ignore", FutureWarning)
            digest = ckpt.convert_openai_weights(src, dst, storage_options=storage_options)
        typer.echo(f"wrote backbone weights {dst} ({digest})")
        typer.echo(f"use them with: vip2scan scan SOURCE --out OUT --checkpoint CKPT --weights {dst}")
        return

    if _is_released_pth(data):
        del data
        from vip2scan.model.config import DetectorConfig
        from vip2scan.model.detector import Detector

        # Without --backbone the factory uses the released models' own backbone and size;
        # another backbone starts from its defaults, random init unless --weights says otherwise.
        base = DetectorConfig(backbone=backbone, weights=None) if backbone else None
        detector = Detector.from_checkpoint(src, config=base, storage_options=storage_options,
                                            overrides={"weights": weights, "image_size": image_size})
        model_id = detector.save_checkpoint(dst, storage_options=storage_options)
        typer.echo(f"wrote checkpoint {dst} (model_id {model_id}, backbone {detector.config.backbone})")
        typer.echo(f"use it with: vip2scan scan SOURCE --out OUT --checkpoint {dst}")
        return

    # A plain backbone state dict (e.g. an OpenCLIP .bin): safetensors, no code involved.
    del data
    digest = ckpt.convert_openai_weights(src, dst, storage_options=storage_options)
    typer.echo(f"wrote backbone weights {dst} ({digest})")


def register(app: typer.Typer) -> None:
    app.command("convert", epilog=EXAMPLE)(convert)
