"""`rrg-stage distill`: EKAGen's global information self-distillation, round after round."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click
import h5py
import joblib
import numpy as np
import torch

from stages.core.artifacts import read_manifest
from stages.core.errors import StageError
from stages.core.stage import StageContext, dataclass_options, stage_options
from stages.text.vocab import Vocabulary
from stages.train import HELP
from stages.training.distill import DistillationSource, Teacher
from stages.training.distributed import setup, teardown
from stages.training.inference import load_run
from stages.training.loop import TrainOptions
from stages.training.model import FORMAT, SavedModel, build_model
from stages.training.run import conditioning, fit_run, source_files, study_source, train_options


def _teacher(ctx: StageContext, run_dir: Path, vocab: Vocabulary, device: str) -> SavedModel:
    """A trained run whose vocabulary is this dataset's; StageError naming the fix otherwise."""
    if not (run_dir / "model.pt").exists():
        raise StageError(f"no trained run at {run_dir} (model.pt missing); train the teacher first, e.g. "
                         f"rrg-stage train --dataset {ctx.dataset} --model ekagen")
    saved = load_run(run_dir, device)
    if not isinstance(saved.vocab, Vocabulary):
        raise StageError(f"{run_dir} is a {saved.config.model} model with its decoder's own tokenizer; distill "
                         "works on models of the dataset's R2Gen vocabulary (e.g. ekagen)")
    if list(saved.vocab.tokens) != list(vocab.tokens):
        raise StageError(f"the teacher {run_dir} was trained on another vocabulary ({len(saved.vocab)} tokens) than "
                         f"{ctx.path('vocab.json')} ({len(vocab)} tokens); its word distributions cannot teach this "
                         "dataset's student. Retrain the teacher on this dataset.")
    return saved


def _init_tables(ctx: StageContext, model: str, inputs: dict[str, Path]) -> dict[str, np.ndarray]:
    """The data a new student of `model` starts from: XProNet's prototypes, EKAGen's knowledge."""
    if model == "xpronet":
        inputs["prototypes"] = ctx.input("prototypes.pkl")
        return {"prototypes": np.asarray(joblib.load(inputs["prototypes"])["matrix"], dtype=np.float32)}
    if model == "ekagen":
        inputs["knowledge"] = ctx.input("knowledge.pkl")
        return {"knowledge": np.asarray(joblib.load(inputs["knowledge"])["rks"], dtype=np.float32)}
    return {}


@click.command("distill")
@stage_options
@click.option("--teacher", "teacher_name", required=True,
              help="The trained teacher: a run name under ARTIFACTS/<dataset>/runs/ (e.g. ekagen). It must have been "
                   "trained on ADM-enhanced images (train --adm, the default for ekagen).")
@click.option("--rounds", type=click.IntRange(1), default=1, show_default=True,
              help="Distillation rounds; each round's student teaches the next. Round i goes to runs/<teacher>-gid<i>/.")
@click.option("--temperature", type=float, default=4.0, show_default=True, help="Softening temperature T.")
@click.option("--kd-weight", type=float, default=0.01, show_default=True,
              help="Weight of the distillation term: loss = CE + kd_weight * T^2 * KL(teacher_T || student_T).")
@click.option("--test-input", type=click.Choice(["enhanced", "plain"]), default="enhanced", show_default=True,
              help="What the student reads at validation and test time: ADM-enhanced images (the reference's choice) "
                   "or plain ones. Recorded in the run and its metrics.")
@click.option("--init", type=click.Choice(["random", "teacher"]), default="random", show_default=True,
              help="Start each student from scratch (born-again style) or from its teacher's weights.")
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
@dataclass_options(TrainOptions, HELP, skip={"seed"})
def command(ctx: StageContext, teacher_name: str, rounds: int, temperature: float, kd_weight: float, test_input: str,
            init: str, device: str, **hyper: Any) -> None:
    """Distil a trained run into students that read plain images (global information self-distillation).

    The frozen teacher reads ADM-enhanced images, the student plain ones, with the teacher's
    architecture, vocabulary, labels and (unless options say otherwise) training options. Every
    round is a complete run directory (model.pt selected on validation, log, curves, last.pt
    for resuming); rerunning the command skips finished rounds and resumes an interrupted one.
    """
    if temperature <= 0:
        raise click.BadParameter("must be > 0", param_hint="--temperature")
    runs = ctx.dir / "runs"
    dataset_h5, vocab_json = ctx.input("dataset.h5"), ctx.input("vocab.json")
    vocab = Vocabulary.load(vocab_json)
    context = setup(device)
    scores: list[tuple[str, int, float, str]] = []
    try:
        first = _teacher(ctx, runs / teacher_name, vocab, str(context.device))
        adm = first.model.visual.adm
        if not adm:
            raise StageError(f"the teacher {runs / teacher_name} was trained on plain images, so there is no ADM-enhanced "
                             "input to distil from; train it with --adm (the default for --model ekagen)")
        taught = (read_manifest(runs / teacher_name / "model.pt") or {}).get("options", {}).get("train", {})
        options = train_options({**taught, **{k: v for k, v in hyper.items() if v is not None}}, ctx.seed)
        monitor = options.monitor
        scores.append((teacher_name, first.info.get("best_epoch", 0), first.info.get(f"val_{monitor}", float("nan")),
                       "teacher"))
        with h5py.File(dataset_h5, "r") as h5:
            splits, image_study = h5["studies/split"].asstr()[:], h5["images/study"][:]
        for round_ in range(1, rounds + 1):
            teacher_dir = runs / (teacher_name if round_ == 1 else f"{teacher_name}-gid{round_ - 1}")
            student_dir = runs / f"{teacher_name}-gid{round_}"
            saved = first if round_ == 1 else _teacher(ctx, teacher_dir, vocab, str(context.device))
            config, oracle = saved.config, bool(saved.info.get("oracle"))
            inputs = {"dataset": dataset_h5, "vocab": vocab_json, "labels": ctx.input("labels.h5"),
                      "teacher": ctx.input(str(teacher_dir.relative_to(ctx.dir) / "model.pt"))}
            labels, label_inputs, label_source = conditioning(ctx, config.model, oracle, splits, image_study)
            inputs.update(label_inputs)
            teacher_spec = dataclasses.replace(saved.model.visual, adm=adm)
            student_spec = dataclasses.replace(teacher_spec, adm=adm if test_input == "enhanced" else None)
            for enhanced in (False, True):
                for file in source_files(teacher_spec, enhanced):
                    inputs[file.split(".")[0]] = ctx.input(file)
            tables = _init_tables(ctx, config.model, inputs)
            settings = {"teacher": teacher_dir.name, "round": round_, "temperature": temperature,
                        "kd_weight": kd_weight, "test_input": test_input, "init": init}
            run_options = {"format": FORMAT, "model": config.model, "distill": settings, "visual": dataclasses.asdict(student_spec),
                           "train": dataclasses.asdict(options), "generator": config.to_dict(),
                           "oracle_labels": oracle, "labels": label_source}
            if not ctx.up_to_date([student_dir / "model.pt"], run_options, inputs):
                plain = study_source(ctx.dir, teacher_spec, labels, enhanced=False)
                rich = study_source(ctx.dir, teacher_spec, labels, enhanced=True)
                source = DistillationSource(plain, rich, rich if test_input == "enhanced" else plain)
                try:
                    torch.manual_seed(ctx.seed + round_)
                    student = build_model(config, student_spec, **tables).to(context.device)
                    if init == "teacher":
                        student.load_state_dict(saved.model.state_dict())
                    click.echo(f"[{ctx.stage}] round {round_}/{rounds}: {teacher_dir.name} (ADM-enhanced input, frozen) "
                               f"teaches {student_dir.name} (plain input; {test_input} at test), T={temperature}, "
                               f"kd_weight={kd_weight}")
                    fit_run(ctx, context, student_dir, student, source, vocab, config, options, run_options, inputs,
                            {"labels": label_source, "oracle": oracle, "distilled": settings},
                            teacher=Teacher(saved.model, temperature, kd_weight))
                finally:
                    source.close()
            if context.main:
                run = json.loads((student_dir / "run.json").read_text())
                scores.append((student_dir.name, run["best_epoch"], run.get(f"val_{monitor}", float("nan")),
                               f"round {round_}"))
    finally:
        teardown(context)
    if context.main:
        click.echo(f"[{ctx.stage}] validation {monitor} per round (checkpoints selected on validation):")
        for name, epoch, score, role in scores:
            click.echo(f"  {role:9s} {name:24s} best epoch {epoch:3d}  val {monitor} {score:.4f}")
