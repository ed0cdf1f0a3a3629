"""`rrg-stage train`: train a report generator (base Transformer or XProNet) into a run directory."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import click
import h5py
import joblib
import numpy as np
import torch

from stages.core.artifacts import atomic_output, read_manifest, write_json_atomic
from stages.core.config import resolve
from stages.core.errors import StageError
from stages.core.stage import StageContext, dataclass_options, stage_options
from stages.generation.config import GeneratorConfig
from stages.text.vocab import Vocabulary
from stages.training.conditioning import conditioning_labels
from stages.training.data import StudySource
from stages.training.distributed import setup, teardown
from stages.training.loop import MONITORS, TrainOptions, Trainer
from stages.training.model import VisualSpec, build_model, save_model

MODELS = ("base", "xpronet")
# GeneratorConfig fields that come from the data, not from the user
DERIVED = {"model", "vocab_size", "max_length", "visual_dim", "max_views", "proto_dim", "num_classes"}
HELP = {
    "epochs": "Training epochs.", "batch_size": "Studies per step (per process under torchrun).",
    "lr": "Adam learning rate of everything but the image encoder.",
    "lr_visual": "Adam learning rate of the image encoder (end-to-end mode only).",
    "weight_decay": "Adam weight decay (amsgrad).", "step_size": "Epochs between learning-rate decays.",
    "gamma": "Learning-rate factor at each decay.", "grad_clip": "Clip gradient values to this (0: off).",
    "monitor": f"Validation metric that selects the checkpoint: {', '.join(MONITORS)}.",
    "val_beam_size": "Beam size when decoding the validation split (1: greedy).",
    "checkpoint_every": "Also save last.pt every this many steps inside an epoch (for resuming).",
}
GENERATOR_HELP = {
    "d_model": "Width of the encoder and decoder.", "heads": "Attention heads.",
    "layers": "Layers of the encoder and of the decoder.", "d_ff": "Width of the feed-forward blocks.",
    "dropout": "Dropout.", "protos_per_class": "XProNet: prototypes per label group (prototypes.pkl's group size).",
    "topk": "XProNet: prototypes each query keeps per head.",
    "img_con_weight": "XProNet: weight of the image-side contrastive loss.",
    "txt_con_weight": "XProNet: weight of the text-side contrastive loss.",
    "con_margin": "XProNet: similarity that pairs without a shared label are pushed below.",
    "con_base": "XProNet: pairs sharing labels aim at similarity con_base ** -(hamming / 14).",
}


def _labels(ctx: StageContext, model: str, oracle: bool, labels_h5: Path, splits: np.ndarray,
            image_study: np.ndarray) -> tuple[np.ndarray, dict[str, Path], str]:
    """Conditioning labels per study, the inputs they came from, and how val/test labels were made."""
    with h5py.File(labels_h5, "r") as h5:
        binary = h5["binary"][:].astype(np.float32)
    if model == "base":
        return binary, {}, "none (the base model is not label-conditioned)"
    if oracle:
        return binary, {}, "ORACLE: val/test labels read from the reference reports (ablation only)"
    adm_h5, diagnosis_pt = ctx.input("adm.h5"), ctx.input("diagnosis.pt")
    labels = conditioning_labels(binary, splits, adm_h5, diagnosis_pt, image_study)
    return labels, {"adm": adm_h5, "diagnosis": diagnosis_pt}, "predicted by diagnosis.pt (adm-masks) for val and test"


@click.command("train")
@stage_options
@click.option("--model", "model_name", type=click.Choice(MODELS), default="xpronet", show_default=True,
              help="base: encoder-decoder Transformer; xpronet: + cross-modal prototypes (needs prototypes.pkl).")
@click.option("--name", help="Run name: the run goes to ARTIFACTS/<dataset>/runs/<name>/ [default: the model].")
@click.option("--visual", type=click.Choice(["cached", "end-to-end"]),
              help="cached: frozen encoder, patch tokens from features.h5 (fast on CPU); end-to-end: train the "
                   "image encoder too [default: cached, or the dataset's pipelines/<dataset>.toml].")
@click.option("--image-encoder", help="End-to-end mode: encoder name [default: the one features.h5 was made with].")
@click.option("--weights", help="End-to-end mode: encoder weights file or 'random'.")
@click.option("--crop", type=int, help="End-to-end mode: training crop / test resize side [default: image size].")
@click.option("--oracle-labels", is_flag=True,
              help="ABLATION: condition val/test on labels from the reference reports instead of the diagnosis "
                   "classifier. Recorded in run.json and every metrics file.")
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
@dataclass_options(TrainOptions, HELP, skip={"seed"})
@dataclass_options(GeneratorConfig, GENERATOR_HELP, skip=DERIVED)
def command(ctx: StageContext, model_name: str, name: str | None, visual: str | None, image_encoder: str | None,
            weights: str | None, crop: int | None, oracle_labels: bool, device: str, **hyper: Any) -> None:
    """Train a report generator; the checkpoint is selected on the validation split only.

    Writes ARTIFACTS/<dataset>/runs/<name>/: model.pt (the best epoch, self-contained),
    run.json, log.jsonl, curves.png, predictions_val.csv, and last.pt for resuming: rerun the
    same command after an interruption and it continues where it stopped. Under
    `torchrun --nproc_per_node N` it trains with DistributedDataParallel.
    """
    options = resolve(ctx.dataset, "train", {"visual": visual, "image_encoder": image_encoder, "weights": weights,
                                             "crop": crop, **hyper})
    train_options = TrainOptions(**{f.name: options[f.name] if options.get(f.name) is not None else f.default
                                    for f in dataclasses.fields(TrainOptions) if f.name != "seed"}, seed=ctx.seed)
    generator_fields = {f.name: options[f.name] for f in dataclasses.fields(GeneratorConfig)
                        if f.name not in DERIVED and options.get(f.name) is not None}
    mode = options.get("visual") or "cached"
    run_dir = ctx.dir / "runs" / (name or model_name)
    dataset_h5, vocab_json, labels_h5 = ctx.input("dataset.h5"), ctx.input("vocab.json"), ctx.input("labels.h5")
    inputs = {"dataset": dataset_h5, "vocab": vocab_json, "labels": labels_h5}
    features_h5 = ctx.input("features.h5") if mode == "cached" else None
    if features_h5 is not None:
        inputs["features"] = features_h5
    prototypes = None
    if model_name == "xpronet":
        inputs["prototypes"] = ctx.input("prototypes.pkl")
        prototypes = np.asarray(joblib.load(inputs["prototypes"])["matrix"], dtype=np.float32)
    context = setup(device)
    source = None
    try:
        with h5py.File(dataset_h5, "r") as h5:
            splits, image_study = h5["studies/split"].asstr()[:], h5["images/study"][:]
            image_size, max_length = int(h5["images/pixels"].shape[-1]), int(h5["studies/token_ids"].shape[1])
        labels, label_inputs, label_source = _labels(ctx, model_name, oracle_labels, labels_h5, splits,
                                                     image_study)
        inputs.update(label_inputs)
        feature_attrs = read_manifest(features_h5)["options"] if features_h5 is not None else {}
        spec = VisualSpec(mode=mode, encoder=options.get("image_encoder") or feature_attrs.get("image_encoder",
                                                                                            "efficientnet-lite0"),
                          weights=options.get("weights") or feature_attrs.get("weights"),
                          input_size=int(feature_attrs.get("input_size") or options.get("crop") or image_size),
                          image_size=image_size, max_views=int(options.get("max_views") or 2))
        source = StudySource(dataset_h5, labels, features_h5=features_h5, max_views=spec.max_views,
                             crop=options.get("crop") if mode == "end-to-end" else None)
        visual_dim = source.token_shape[1] if source.cached else None
        vocab = Vocabulary.load(vocab_json)
        config = GeneratorConfig(model=model_name, vocab_size=len(vocab), max_length=max_length,
                                 max_views=spec.max_views, **({"visual_dim": visual_dim} if visual_dim else {}),
                                 **({"proto_dim": int(prototypes.shape[-1]),
                                     "num_classes": int(prototypes.shape[0])} if prototypes is not None else {}),
                                 **generator_fields)
        run_options = {"model": model_name, "visual": dataclasses.asdict(spec), "train": dataclasses.asdict(train_options),
                       "generator": config.to_dict(), "oracle_labels": oracle_labels, "labels": label_source}
        model_pt = run_dir / "model.pt"
        if ctx.up_to_date([model_pt], run_options, inputs):  # every rank asks, so all of them stop together
            return
        if ctx.force and context.main and run_dir.exists():
            shutil.rmtree(run_dir)
        context.barrier()
        run_dir.mkdir(parents=True, exist_ok=True)
        header = {"options": run_options,
                  "inputs": {k: (read_manifest(p) or {}).get("sha256") for k, p in sorted(inputs.items())}}
        torch.manual_seed(ctx.seed)
        model = build_model(config, spec, prototypes).to(context.device)
        click.echo(f"[{ctx.stage}] {model_name} ({sum(p.numel() for p in model.parameters() if p.requires_grad):,} "
                   f"trainable parameters, {mode} visual tokens) on {len(source.rows('train'))} training studies; "
                   f"selecting on {len(source.rows('val'))} validation studies by {train_options.monitor}; "
                   f"{context.world} process(es) on {context.device}")
        try:
            trainer = Trainer(model, source, vocab, train_options, run_dir, context, max_length=max_length,
                              header=header)
            state = trainer.fit()
        except ValueError as error:
            raise StageError(str(error)) from None
        if not context.main:
            return
        best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
        info = {"dataset": ctx.dataset, "best_epoch": state["best_epoch"], "labels": label_source,
                "oracle": oracle_labels, f"val_{train_options.monitor}": state["best_score"]}
        with atomic_output(model_pt) as tmp:
            save_model(tmp, model, vocab, config, best["model"], info)
        write_json_atomic(run_dir / "run.json", {
            "dataset": ctx.dataset, "model": model_name, "name": run_dir.name, "checkpoint": "model.pt",
            "best_epoch": state["best_epoch"], "selected_on": f"val {train_options.monitor}",
            "oracle": oracle_labels, "labels": label_source, "seed": ctx.seed, "visual": mode,
            "decoding": {"beam_size": train_options.val_beam_size, "max_length": max_length,
                         "block_trigrams": True}})
        ctx.finish(model_pt, options=run_options, inputs=inputs,
                   counts={"best_epoch": state["best_epoch"], f"val_{train_options.monitor}": round(state["best_score"], 4),
                           "epochs": train_options.epochs})
        click.echo(f"[{ctx.stage}] curves: {run_dir / 'curves.png'}; evaluate with "
                   f"rrg-stage evaluate --run {run_dir}")
    finally:
        if source is not None:
            source.close()
        teardown(context)
