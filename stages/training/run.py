"""A training run from its inputs to its files, shared by `train` and `distill`.

- which labels condition the model (training pseudo-labels; the diagnosis classifier's
  predictions for validation and test; reference labels only as a flagged ablation);
- which study source feeds it: cached tokens (features.h5, or features_adm.h5 for ADM-enhanced
  images) or pixels (enhanced on the fly from adm.h5);
- the finished run: model.pt (the validation-selected epoch), run.json and the manifest.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
import h5py
import numpy as np
import torch

from stages.core.artifacts import atomic_output, check_input, read_manifest, write_json_atomic
from stages.core.checkpoints import clear_stale_run, run_header
from stages.core.errors import StageError, usage_errors
from stages.core.stage import StageContext
from stages.generation.config import LABEL_CONDITIONED, GeneratorConfig
from stages.text.vocab import Vocabulary
from stages.training.conditioning import conditioning_labels
from stages.training.data import AdmEnhancement, MixedSource, StudySource
from stages.training.distill import Teacher
from stages.training.distributed import Dist
from stages.training.loop import TrainOptions, Trainer
from stages.training.model import ReportModel, TextCodec, VisualSpec, save_model
from stages.training.warmstart import WarmStart, subword_targets

# the encoder settings a feature file was made with; features_adm.h5 must match features.h5 in all
ENCODER_OPTIONS = ("image_encoder", "weights", "input_size")


def conditioning(ctx: StageContext, model: str, oracle: bool, splits: np.ndarray, image_study: np.ndarray
                 ) -> tuple[np.ndarray, dict[str, Path], str]:
    """Conditioning labels per study, the inputs they came from, and how val/test labels were made."""
    labels_h5 = ctx.input("labels.h5")
    with h5py.File(labels_h5, "r") as h5:
        binary = h5["binary"][:].astype(np.float32)
    if model not in LABEL_CONDITIONED:
        return binary, {}, f"none (the {model} model is not label-conditioned)"
    if oracle:
        return binary, {}, "ORACLE: val/test labels read from the reference reports (ablation only)"
    adm_h5, diagnosis_pt = ctx.input("adm.h5"), ctx.input("diagnosis.pt")
    labels = conditioning_labels(binary, splits, adm_h5, diagnosis_pt, image_study)
    return labels, {"adm": adm_h5, "diagnosis": diagnosis_pt}, "predicted by diagnosis.pt (adm-masks) for val and test"


def source_files(spec: VisualSpec, enhanced: bool) -> list[str]:
    """The artifacts a study source for `spec` reads besides dataset.h5."""
    if spec.mode == "cached":
        return ["features_adm.h5" if enhanced else "features.h5"]
    return ["adm.h5"] if enhanced else []


def study_source(base: Path, spec: VisualSpec, labels: np.ndarray, enhanced: bool,
                 targets: tuple[np.ndarray, np.ndarray] | None = None) -> StudySource:
    """The StudySource of the dataset at `base` that gives a model with `spec` its inputs, plain
    or ADM-enhanced (with spec.adm's settings); `targets` replace the R2Gen ids (see StudySource)."""
    if enhanced and not spec.adm:
        raise StageError("ADM-enhanced inputs were asked for a model without ADM settings")
    dataset_h5 = base / "dataset.h5"
    if spec.mode == "cached":
        features = base / source_files(spec, enhanced)[0]
        check_cached(features, spec)
        return StudySource(dataset_h5, labels, features_h5=features, max_views=spec.max_views, targets=targets)
    adm = AdmEnhancement(base / "adm.h5", spec.adm["theta"], spec.adm["background"]) if enhanced else None
    return StudySource(dataset_h5, labels, max_views=spec.max_views, crop=spec.input_size, adm=adm, targets=targets)


def extra_inputs(folder: Path, dataset: str, mode: str, vocab_json: Path) -> dict[str, Path]:
    """The artifacts of an extra training dataset (`train --extra-data`), checked as inputs are, and
    checked to store token ids of the real vocabulary (its own vocab.json is the same, or it was
    made from this vocab.json, as `synthesize generate` does)."""
    files = {"extra_dataset": folder / "dataset.h5", "extra_labels": folder / "labels.h5"}
    if mode == "cached":
        files["extra_features"] = folder / "features.h5"
    for path in files.values():
        try:
            check_input(path, dataset)
        except StageError as error:
            raise StageError(f"--extra-data: {error} (for the extra dataset, give the stage --artifacts "
                             f"{folder.parent})") from None
    real = Vocabulary.load(vocab_json).tokens
    own, recorded = folder / "vocab.json", read_manifest(files["extra_dataset"])["inputs"].get("vocab")
    same = (Vocabulary.load(own).tokens == real if own.exists()
            else recorded is not None and recorded["sha256"] == read_manifest(vocab_json)["sha256"])
    if not same:
        raise StageError(f"{files['extra_dataset']} stores token ids of another vocabulary than {vocab_json}; build "
                         "it with this dataset's vocabulary (rrg-stage synthesize generate does)")
    return files


def with_extra(source: StudySource, folder: Path, spec: VisualSpec, warm_start: WarmStart | None,
               max_tokens: int | None) -> MixedSource:
    """`source` with the training studies of the dataset in `folder` added (labels from its labels.h5;
    a warm-started decoder's targets made of its reports as of the real ones)."""
    with h5py.File(folder / "labels.h5", "r") as h5:
        labels = h5["binary"][:].astype(np.float32)
    targets = None
    if warm_start is not None:
        targets = subword_targets(folder / "dataset.h5", warm_start.tokenizer, int(max_tokens))[0]
    return MixedSource(source, study_source(folder, spec, labels, enhanced=False, targets=targets))


def check_cached(features: Path, spec: VisualSpec) -> None:
    """Stop unless `features` holds tokens of the encoder `spec` names (and, for features_adm.h5,
    images enhanced as spec.adm says)."""
    manifest = read_manifest(features)
    if manifest is None:
        raise StageError(f"{features} is missing or unfinished; build it with rrg-stage extract-features"
                         + (" --adm" if features.name == "features_adm.h5" else ""))
    options = manifest["options"]
    made = {k: options.get(k) for k in ENCODER_OPTIONS}
    wanted = {"image_encoder": spec.encoder, "weights": spec.weights, "input_size": spec.input_size}
    if made != wanted:
        raise StageError(f"{features} was encoded with {made} but this model reads tokens of {wanted}; rebuild it "
                         "with the same encoder options (rrg-stage extract-features ... --force)")
    if features.name == "features_adm.h5" and spec.adm:
        recorded = {k: options.get(k) for k in ("theta", "background")}
        if recorded != {k: spec.adm[k] for k in ("theta", "background")}:
            raise StageError(f"{features} enhanced images with {recorded}, not with this model's {spec.adm}; "
                             "rebuild it: rrg-stage extract-features --adm --force")


def visual_spec(mode: str, options: dict[str, Any], feature_options: dict[str, Any], image_size: int,
                adm: dict[str, float] | None) -> VisualSpec:
    """How a new model sees images: cached tokens of features.h5's encoder, or an encoder trained
    end to end (the options name it, else features.h5's, else EfficientNet-Lite0)."""
    return VisualSpec(mode=mode, encoder=options.get("image_encoder") or feature_options.get("image_encoder",
                                                                                         "efficientnet-lite0"),
                      weights=options.get("weights") or feature_options.get("weights"),
                      input_size=int(feature_options.get("input_size") or options.get("crop") or image_size),
                      image_size=image_size, max_views=int(options.get("max_views") or 2), adm=adm)


def fit_run(ctx: StageContext, context: Dist, run_dir: Path, model: ReportModel, source: Any, vocab: Vocabulary,
            config: GeneratorConfig, options: TrainOptions, run_options: dict[str, Any], inputs: dict[str, Path],
            info: dict[str, Any], teacher: Teacher | None = None, text: TextCodec | None = None) -> dict[str, Any]:
    """Train `model` into `run_dir` (resuming its last.pt) and write model.pt, run.json and the
    manifest on rank 0. `vocab` is the dataset's (validation references); `text` the model's own
    tokenizer when it has one (warmstart), else `vocab`. Returns the trainer's final state."""
    header = run_header(run_options, inputs)
    if context.main:
        clear_stale_run(run_dir, "model.pt", header, ctx.force, lambda line: click.echo(f"[{ctx.stage}] {line}"))
    context.barrier()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        trainer = Trainer(model, source, vocab, options, run_dir, context, max_length=config.max_length,
                          header=header, teacher=teacher, text=text)
        state = trainer.fit()
    except ValueError as error:
        raise StageError(str(error)) from None
    if not context.main:
        return state
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    info = {"dataset": ctx.dataset, "best_epoch": state["best_epoch"], **info,
            f"val_{options.monitor}": state["best_score"]}
    model_pt = run_dir / "model.pt"
    decoding = options.decoding(config.max_length)
    with atomic_output(model_pt) as tmp:
        save_model(tmp, model, text or vocab, config, best["model"], info)
    write_json_atomic(run_dir / "run.json", {
        "dataset": ctx.dataset, "model": config.model, "name": run_dir.name, "checkpoint": "model.pt",
        "best_epoch": state["best_epoch"], "selected_on": f"val {options.monitor}",
        f"val_{options.monitor}": state["best_score"], "oracle": info.get("oracle", False),
        "labels": info.get("labels"), "seed": options.seed, "visual": model.visual.mode,
        "adm_enhanced_input": bool(model.visual.adm),
        **({"extra_data": info["extra_data"]} if "extra_data" in info else {}),
        **({"distilled": info["distilled"]} if "distilled" in info else {}),
        **({"init": info["init"], "warm_start": info.get("warm_start")} if "init" in info else {}),
        "decoding": {"beam_size": decoding.beam_size, "max_length": decoding.max_length,
                     "block_trigrams": not decoding.mbr_samples, "length_penalty": decoding.length_penalty,
                     "mbr_samples": decoding.mbr_samples, "mbr_temperature": decoding.mbr_temperature}})
    ctx.finish(model_pt, options=run_options, inputs=inputs,
               counts={"best_epoch": state["best_epoch"], f"val_{options.monitor}": round(state["best_score"], 4),
                       "epochs": options.epochs})
    click.echo(f"[{ctx.stage}] curves: {run_dir / 'curves.png'}; evaluate with rrg-stage evaluate --run {run_dir}")
    return state


def train_options(options: dict[str, Any], seed: int) -> TrainOptions:
    """TrainOptions from resolved options (unset fields keep their defaults), checked before anything
    is written: a typo must not replace a finished run."""
    training = TrainOptions(**{f.name: options[f.name] if options.get(f.name) is not None else f.default
                               for f in dataclasses.fields(TrainOptions) if f.name != "seed"}, seed=seed)
    with usage_errors():
        training.validate()
    return training
