"""`rrg-stage synthesize`: CXR-IRGen-style image-report pair generation (train-vision, generate, evaluate)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from stages.adm.classifier import load_diagnosis
from stages.adm.masks import read_masks
from stages.core.artifacts import atomic_output, check_input, read_manifest, write_json_atomic
from stages.core.checkpoints import clear_stale_run, run_header
from stages.core.config import resolve
from stages.core.errors import StageError, usage_errors
from stages.core.stage import StageContext, dataclass_options, stage_options
from stages.data.records import SPLITS
from stages.evaluation.bootstrap import DRAWS
from stages.evaluation.runs import read_run, run_decoding
from stages.generation.decoding import Decoding
from stages.models.image_encoders import build_image_encoder
from stages.synthesis.evaluation import evaluate_vision
from stages.synthesis.pairs import SyntheticStudy, build_dataset, write_r2gen
from stages.synthesis.prompts import PromptBank, plan_prompts, to_uint8
from stages.synthesis.vision import (RUN_LENGTH, VisionConfig, VisionModel, VisionOptions, VisionTrainer, load_vision,
                                     sample, save_vision)
from stages.text.vocab import Vocabulary
from stages.training.inference import image_predictions
from stages.training.run import ENCODER_OPTIONS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DERIVED = {"text_dim", "image_dim", "views"}
TRAIN_HELP = {
    "steps": "Optimizer steps.", "batch_size": "Images per step.", "lr": "Peak AdamW learning rate (after warm-up).",
    "weight_decay": "AdamW weight decay.", "warmup_steps": "Linear warm-up steps.",
    "grad_clip": "Gradient norm clipping (0: off).",
    "ema_decay": "Decay of the exponential moving average of the weights that is kept and sampled with.",
    "checkpoint_every": "Save last.pt and compute the validation loss every this many steps.",
    "log_every": "Write a training line to log.jsonl every this many steps.",
    "keep": "Which EMA weights vision.pt keeps: best (those of the checkpoint with the lowest validation "
            "denoising loss; the last when there are no validation images) or last.",
    "balance": "Draw training images with probability (images / images sharing the image's rarest finding) ** this, "
               "so rare signs are seen more often (0: each image once per epoch).",
    "finding_weight": "Count each pixel's denoising error 1 + this much where the diagnosis classifier's finding "
                      "mask covers it (adm.h5, from rrg-stage adm-masks), so small findings are not left out "
                      "(0: the plain loss, the paper's).",
}
MODEL_HELP = {
    "resolution": "Side of the generated images in pixels (the stored images are resized to it).",
    "width": "Channels of the U-Net's first level.", "mults": "Channel multiplier per level, comma-separated.",
    "res_blocks": "Residual blocks per level.", "attention": "Resolutions with self-attention, comma-separated.",
    "heads": "Attention heads.", "dropout": "Dropout in the residual blocks.",
    "schedule": "Noise schedule: cosine or linear.", "timesteps": "Diffusion timesteps.",
    "target": "What the U-Net predicts: eps (the noise) or v.",
    "prompt": "What conditions the model: text+image (CXR-IRGen's prompt), text (the report alone) or image "
              "(the reference image alone).",
    "cond_dropout": "Share of training samples whose prompt is dropped (classifier-free guidance).",
}


def _vision_run(ctx: StageContext, name: str) -> tuple[Path, Path]:
    run_dir = ctx.dir / "synthesize" / name
    return run_dir, run_dir / "vision.pt"


def _inputs(ctx: StageContext) -> dict[str, Path]:
    return {"dataset": ctx.input("dataset.h5"), "labels": ctx.input("labels.h5"), "features": ctx.input("features.h5")}


def _vision(ctx: StageContext, name: str, device: str) -> tuple[Path, VisionModel, dict[str, Any]]:
    _, vision_pt = _vision_run(ctx, name)
    path = ctx.input(str(vision_pt.relative_to(ctx.dir)))
    try:
        model, info = load_vision(path, device)
    except (ValueError, FileNotFoundError) as error:
        raise StageError(str(error)) from None
    return path, model, info


def _extra_inputs(ctx: StageContext, folder: Path, features_h5: Path, masks: bool) -> dict[str, Path]:
    """The artifacts of train-vision's extra dataset (of any dataset name), checked as inputs are;
    its features must come from the encoders of `features_h5` (the prompts are made of them)."""
    files = {f"extra_{kind}": folder / f"{kind}.h5" for kind in ("dataset", "labels", "features")}
    if masks:
        files["extra_adm"] = folder / "adm.h5"
    for path in files.values():
        try:
            check_input(path, (read_manifest(path) or {}).get("dataset", ctx.dataset))
        except StageError as error:
            raise StageError(f"--extra-data: {error} (for the extra dataset, give the stage --artifacts "
                             f"{folder.parent})") from None
        click.echo(f"[{ctx.stage}] reads {path}")
    keys = (*ENCODER_OPTIONS, "text_encoder")
    own, theirs = ({k: read_manifest(path)["options"].get(k) for k in keys}
                   for path in (features_h5, files["extra_features"]))
    if own != theirs:
        raise StageError(f"--extra-data: {files['extra_features']} was extracted with {theirs}, {features_h5} with "
                         f"{own}; extract the extra dataset's features with the same options")
    return files


def _bank(inputs: dict[str, Path], model: VisionModel | None = None, prefix: str = "") -> PromptBank:
    bank = PromptBank(inputs[f"{prefix}dataset"], inputs[f"{prefix}labels"], inputs[f"{prefix}features"])
    if model is not None and (bank.text.shape[1], bank.image.shape[1], len(bank.view_names)) != (
            model.config.text_dim, model.config.image_dim, model.config.views):
        bank.close()
        raise StageError(f"the vision module was trained on prompts of other sizes than {inputs['features']}'s; "
                         "retrain it: rrg-stage synthesize train-vision --force")
    return bank


@click.group("synthesize")
def command() -> None:
    """Synthetic image-report pairs (CXR-IRGen): train-vision, generate, evaluate.

    train-vision trains a conditional diffusion model that draws a radiograph from a prompt (the
    report's text embedding + a reference image's embedding); generate writes synthetic pairs
    (its images, reports from a trained report generator) as a dataset.h5 that
    `rrg-stage train --extra-data` adds to the training split; evaluate measures the images
    (Fréchet distance, the diagnosis classifier's agreement with the prompts) and draws a grid.
    """


@command.command("train-vision")
@stage_options
@click.option("--name", default="vision", show_default=True,
              help="Run name: the run goes to ARTIFACTS/<dataset>/synthesize/<name>/.")
@click.option("--extra-data", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of another labelled dataset (dataset.h5, labels.h5, features.h5 from the same encoders, "
                   "and adm.h5 for --finding-weight) whose training studies are added to the training images "
                   "and the reference pool; validation stays this dataset's. Refused when one of them is a "
                   "validation or test study here.")
@click.option("--device", default=DEVICE, show_default=True)
@dataclass_options(VisionOptions, TRAIN_HELP, skip={"seed"})
@dataclass_options(VisionConfig, MODEL_HELP, skip=DERIVED)
def train_vision(ctx: StageContext, name: str, extra_data: Path | None, device: str, **hyper: Any) -> None:
    """Train the vision module: a U-Net denoising diffusion model in pixel space, conditioned on the
    report's MiniLM embedding and a reference image's pooled encoder features (features.h5), with
    condition dropout for classifier-free guidance.

    Writes ARTIFACTS/<dataset>/synthesize/<name>/: vision.pt (EMA weights), run.json, log.jsonl,
    curves.png and last.pt: rerun the same command after an interruption and it continues; rerun
    it with more --steps (nothing else changed) and the finished run trains on to them.
    """
    inputs = _inputs(ctx)
    options = resolve(ctx.dataset, "synthesize", hyper, variant="train-vision")
    finding_weight = options.get("finding_weight") or 0
    if extra_data is not None:
        inputs.update(_extra_inputs(ctx, extra_data, inputs["features"], finding_weight > 0))
    bank = _bank(inputs)
    try:
        added = bank.add_training(_bank(inputs, prefix="extra_")) if extra_data is not None else 0
        fields = {f.name: options[f.name] for f in dataclasses.fields(VisionConfig)
                  if f.name not in DERIVED and options.get(f.name) is not None}
        config = VisionConfig(**fields, text_dim=bank.text.shape[1], image_dim=bank.image.shape[1],
                              views=len(bank.view_names))
        training = VisionOptions(**{f.name: options[f.name] for f in dataclasses.fields(VisionOptions)
                                    if f.name != "seed" and options.get(f.name) is not None}, seed=ctx.seed)
        with usage_errors():  # before a finished run of other options is cleared for this one
            config.validate()
            training.validate()
        if training.finding_weight > 0:
            inputs["adm"] = ctx.input("adm.h5")
        features = read_manifest(inputs["features"])["options"]
        run_options = {"model": config.to_dict(), "train": dataclasses.asdict(training), "views": bank.view_names}
        run_dir, vision_pt = _vision_run(ctx, name)
        if ctx.up_to_date([vision_pt], run_options, inputs):
            return
        header = run_header(run_options, inputs)
        clear_stale_run(run_dir, vision_pt.name, header, ctx.force, lambda line: click.echo(f"[{ctx.stage}] {line}"),
                        RUN_LENGTH)
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(ctx.seed)
        model = VisionModel(config).to(device)
        masks = None
        if "adm" in inputs:
            train_rows = bank.image_rows("train")
            masks = np.empty((len(train_rows), bank.data.image_size, bank.data.image_size), dtype=bool)
            for which, positions, local in bank.by_file(train_rows):  # file 1: the extra dataset's
                masks[positions] = read_masks(inputs["extra_adm" if which else "adm"], local)
        trainer = VisionTrainer(model, bank, training, run_dir, header, masks=masks)
        pooled = int((bank.image_file[trainer.train_rows] > 0).sum())
        extra = f" ({pooled} of them from the {added} training studies of {extra_data})" if extra_data else ""
        click.echo(f"[{ctx.stage}] {config.prompt} prompt, {config.resolution} px U-Net ({sum(p.numel() for p in model.parameters()):,} "
                   f"parameters) on {len(trainer.train_rows)} training images{extra} ({len(trainer.val_rows)} for the "
                   f"validation loss), {training.steps} steps of {training.batch_size} on {device}")
        state = trainer.fit()
    except ValueError as error:
        raise StageError(str(error)) from None
    finally:
        bank.close()
    weights, kept = trainer.kept()
    validation = kept["val_loss"] if kept else None
    info = {"dataset": ctx.dataset, "name": name, "prompt": config.prompt, "steps": training.steps,
            "kept_step": kept["step"] if kept else training.steps,
            "view_names": bank.view_names, "image_encoder": features.get("image_encoder"),
            "image_weights": features.get("weights"), "input_size": features.get("input_size"),
            "text_encoder": features.get("text_encoder"), "val_loss": validation,
            "seconds_per_step": statistics.median(state.get("seconds_per_step") or [float("nan")]),
            **({"extra_data": {"path": str(extra_data), "train_studies": added}} if extra_data is not None else {})}
    with atomic_output(vision_pt) as tmp:
        save_vision(tmp, model, weights, info)
    write_json_atomic(run_dir / "run.json", {**info, "options": run_options})
    ctx.finish(vision_pt, options=run_options, inputs=inputs,
               counts={"steps": training.steps, "kept_step": info["kept_step"], "val_loss": round(validation, 5) if validation else None,
                       "seconds_per_step": round(info["seconds_per_step"], 3)})
    click.echo(f"[{ctx.stage}] curves: {run_dir / 'curves.png'}; next: rrg-stage synthesize generate / evaluate "
               f"--dataset {ctx.dataset} --run {name}")


# sampling settings where a dataset's [synthesize] table sets none (the demo's are in pipelines/demo.toml)
SAMPLING = {"guidance": 3.0, "ddim_steps": 50, "batch_size": 32}


def sampling_options(func: Any) -> Any:
    """--guidance, --ddim-steps and --batch-size (unset: the dataset's [synthesize] table, then SAMPLING)."""
    for option in reversed([
            click.option("--guidance", type=float, help=f"Classifier-free guidance scale [default: "
                                                         f"{SAMPLING['guidance']}, or pipelines/<dataset>.toml]."),
            click.option("--ddim-steps", type=int, help=f"DDIM sampling steps [default: {SAMPLING['ddim_steps']}, "
                                                        "or the toml]."),
            click.option("--batch-size", type=int, help=f"Images sampled at once [default: {SAMPLING['batch_size']}, "
                                                        "or the toml].")]):
        func = option(func)
    return func


def _sampling_options(ctx: StageContext, variant: str, given: dict[str, Any]) -> dict[str, Any]:
    options = resolve(ctx.dataset, "synthesize", given, variant=variant)
    return {**SAMPLING, **{k: v for k, v in options.items() if v is not None}}


@command.command("generate")
@stage_options
@click.option("--run", "run_name", default="vision", show_default=True, help="The vision run (synthesize/<run>/).")
@click.option("--n", type=int, help="Synthetic studies to write (one image per view of each prompt's study).")
@click.option("--split", type=click.Choice(SPLITS), help="Prompts: the reports of this split [default: train; only training pairs may be added "
                              "to training].")
@click.option("--reports", type=click.Choice(["language", "prompt"]),
              help="language: each pair's report is written by the language module (--language-run) from the "
                   "generated image, as CXR-IRGen's pairs; prompt: the prompt report itself [default: language].")
@click.option("--language-run", help="The trained report generator used as the language module "
                                     "(ARTIFACTS/<dataset>/runs/<name>/) [default: xpronet].")
@sampling_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Artifact root of the synthetic dataset: it goes to OUT/<dataset>/ [default: ARTIFACTS/synthetic].")
@click.option("--device", default=DEVICE, show_default=True)
def generate(ctx: StageContext, run_name: str, n: int | None, split: str | None, reports: str | None,
             language_run: str | None, guidance: float | None, ddim_steps: int | None, batch_size: int | None,
             out: Path | None, device: str) -> None:
    """Write N synthetic image-report pairs as a dataset (R2Gen folder + dataset.h5, flagged synthetic).

    Each prompt is a report of --split with a reference image of the training split; its images
    (one per view) are sampled with a fixed seed. dataset.h5 is built by preprocessing's code with
    the real vocabulary. Then label it and extract its features as any dataset
    (rrg-stage label / extract-features --artifacts OUT) and add it to training with
    rrg-stage train --extra-data OUT/<dataset>.
    """
    options = _sampling_options(ctx, "generate", {"n": n, "split": split, "reports": reports,
                                                   "language_run": language_run, "guidance": guidance,
                                                   "ddim_steps": ddim_steps, "batch_size": batch_size})
    if options.get("n") is None or options["n"] < 1:
        raise click.UsageError("--n (at least 1) is needed: give it or set it under [synthesize.generate]")
    options.update(split=options.get("split") or "train", reports=options.get("reports") or "language",
                   language_run=options.get("language_run") or "xpronet", run=run_name)
    inputs = {**_inputs(ctx), "vocab": ctx.input("vocab.json")}
    inputs["vision"], model, vision_info = _vision(ctx, run_name, device)
    if options["reports"] == "language":
        inputs["language"] = ctx.input(f"runs/{options['language_run']}/model.pt")
    else:
        options.pop("language_run")
    folder = (out or ctx.artifacts / "synthetic") / ctx.dataset
    dataset_h5 = folder / "dataset.h5"
    if ctx.up_to_date([dataset_h5], options, inputs):
        return
    preprocessed = read_manifest(inputs["dataset"])["options"]
    bank = _bank(inputs, model)
    try:
        plan = plan_prompts(bank, options["split"], int(options["n"]), ctx.seed)
        images = to_uint8(sample(model, plan.prompts(bank), guidance=options["guidance"], steps=options["ddim_steps"],
                                 seed=ctx.seed, batch_size=options["batch_size"]), bank.data.image_size)
        studies = [SyntheticStudy(f"synthetic-{i:05d}", bank.data.raw_reports[s],
                                  list(images[plan.image_study == i]),
                                  [bank.view_names[v] for v in plan.views[plan.image_study == i]], bank.data.ids[s],
                                  [f"{bank.data.ids[bank.image_study[r]]}/{bank.view_names[bank.view[r]]}"
                                   for r in plan.references[plan.image_study == i]])
                   for i, s in enumerate(plan.studies)]
    finally:
        bank.close()
    raw = folder / "raw"
    if raw.exists():
        shutil.rmtree(raw)
    annotation = write_r2gen(raw, studies)
    if options["reports"] == "language":
        language = inputs["language"].parent
        written, _ = image_predictions(language, [(s.id, [raw / "images" / p for p in s.entry()["image_path"]])
                                                  for s in studies], Decoding(**run_decoding(read_run(language))), device)
        for study in studies:
            study.report = written[study.id]
        annotation = write_r2gen(raw, studies)
    counts = build_dataset(raw, dataset_h5, Vocabulary.load(inputs["vocab"]),
                           clean_style=preprocessed["clean_style"], max_length=int(preprocessed["max_length"]),
                           image_size=bank.data.image_size, key=json.dumps(options, sort_keys=True))
    ctx.finish(dataset_h5, options=options, inputs=inputs, counts=counts,
               extra={"synthetic": True, "annotation": str(annotation), "vision_prompt": vision_info["prompt"]})
    click.echo(f"[{ctx.stage}] next: rrg-stage label --artifacts {folder.parent} --dataset {ctx.dataset}; "
               f"rrg-stage extract-features --artifacts {folder.parent} --dataset {ctx.dataset}; "
               f"rrg-stage train --dataset {ctx.dataset} --extra-data {folder}")


@command.command("evaluate")
@stage_options
@click.option("--run", "run_name", default="vision", show_default=True, help="The vision run (synthesize/<run>/).")
@click.option("--split", type=click.Choice(SPLITS),
              help="Prompts: every report of this split, with training reference images [default: test].")
@sampling_options
@click.option("--components", type=int, default=64, show_default=True,
              help="Principal axes (of the training images' features) for the projected Fréchet distance.")
@click.option("--grid-rows", type=int, default=8, show_default=True, help="Prompts shown in the image grid.")
@click.option("--device", default=DEVICE, show_default=True)
def evaluate(ctx: StageContext, run_name: str, split: str | None, guidance: float | None, ddim_steps: int | None,
             batch_size: int | None, components: int, grid_rows: int, device: str) -> None:
    """Measure the vision module on the prompts of a split: Fréchet distance of its images to real
    ones (floor: real against real; baselines: noise and the mean image), the diagnosis
    classifier's per-class AUROC on them against the prompt reports' labels, and an image grid.

    Writes ARTIFACTS/<dataset>/synthesize/<run>/evaluation_<split>.json, grid_<split>.png,
    contrasts_<split>.png (for each visible finding and view, the mean image with the finding minus
    the mean without it, real and generated side by side) and samples_<split>.npz (the images).
    """
    options = _sampling_options(ctx, "evaluate", {"split": split, "guidance": guidance, "ddim_steps": ddim_steps,
                                                   "batch_size": batch_size})
    options.update(split=options.get("split") or "test", components=components, grid_rows=grid_rows, run=run_name,
                   bootstrap_draws=DRAWS)
    inputs = {**_inputs(ctx), "diagnosis": ctx.input("diagnosis.pt")}
    inputs["vision"], model, vision_info = _vision(ctx, run_name, device)
    run_dir = inputs["vision"].parent
    output = run_dir / f"evaluation_{options['split']}.json"
    if ctx.up_to_date([output], options, inputs):
        return
    features = read_manifest(inputs["features"])["options"]
    bank = _bank(inputs, model)
    try:
        diagnosis = load_diagnosis(inputs["diagnosis"], bank.data.image_size, device)
        encoder = build_image_encoder(features["image_encoder"], features.get("weights")).to(device).eval()
        plan = plan_prompts(bank, options["split"], None, ctx.seed)
        results, generated = evaluate_vision(
            model, bank, plan, diagnosis, encoder, input_size=int(features["input_size"]),
            guidance=options["guidance"], steps=options["ddim_steps"], seed=ctx.seed,
            batch_size=options["batch_size"], components=components,
            grid=run_dir / f"grid_{options['split']}.png", grid_size=grid_rows,
            contrast_maps=run_dir / f"contrasts_{options['split']}.png")
        with atomic_output(run_dir / f"samples_{options['split']}.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, images=generated, study=np.asarray(bank.data.ids)[plan.studies][
                    plan.image_study], view=np.asarray(bank.view_names)[plan.views])
    except ValueError as error:
        raise StageError(str(error)) from None
    finally:
        bank.close()
    results.update(split=options["split"], prompt=vision_info["prompt"], guidance=options["guidance"],
                   ddim_steps=options["ddim_steps"], vision_steps=vision_info["steps"],
                   vision_kept_step=vision_info["kept_step"],
                   # 0: the plain loss, which runs from before --finding-weight existed trained with
                   finding_weight=read_manifest(inputs["vision"])["options"]["train"].get("finding_weight", 0.0),
                   vision_seconds_per_step=vision_info["seconds_per_step"], run=run_name)
    write_json_atomic(output, results)
    generated_auroc = results["clinical_auroc"]["generated"]
    ctx.finish(output, options=options, inputs=inputs,
               counts={"images": results["images"],
                       "frechet_generated": round(results["frechet"]["generated"]["full"], 2),
                       "frechet_floor": round(results["frechet"]["real (floor)"]["full"], 2),
                       "auroc_visible_macro": generated_auroc["visible_macro"]})
    for name, values in results["frechet"].items():
        click.echo(f"[{ctx.stage}] Fréchet distance, {name}: {values['full']:.2f} (PCA-{components}: "
                   f"{values[f'pca{components}']:.2f})")
    click.echo(f"[{ctx.stage}] classifier AUROC on generated images: " + ", ".join(
        f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in generated_auroc["per_class"].items()))
