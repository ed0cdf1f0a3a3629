"""`rrg-stage probe`: downstream scores of a pretrained encoder (zero-shot, linear probe, retrieval)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import h5py
import torch

from stages.core.artifacts import atomic_output, check_input
from stages.core.errors import StageError
from stages.core.stage import StageContext, stage_options
from stages.evaluation.bootstrap import DRAWS, format_interval
from stages.labeling.observations import OBSERVATIONS
from stages.pretraining.data import PairSource
from stages.pretraining.model import load_checkpoint
from stages.pretraining.probe import C_GRID, KS, probe


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def _span(bounds: list[float] | None) -> str:
    return "" if bounds is None else f" {format_interval(bounds)}"


def _run_context(ctx: StageContext, run_dir: Path) -> StageContext:
    """The context of the dataset a pretraining run belongs to (ARTIFACTS/<dataset>/pretrain/<name>/)."""
    run_json = run_dir / "run.json"
    try:
        dataset = json.loads(run_json.read_text())["dataset"]
    except (OSError, ValueError, KeyError):
        raise StageError(f"{run_json} is missing or unreadable: {run_dir} is not a finished pretraining run; "
                         "build it with rrg-stage pretrain") from None
    given = click.get_current_context().get_parameter_source("dataset") == click.core.ParameterSource.COMMANDLINE
    if given and dataset != ctx.dataset:
        raise click.UsageError(f"--dataset {ctx.dataset} but {run_json} says {dataset!r}; "
                               "leave --dataset out with --run")
    return dataclasses.replace(ctx, dataset=dataset, artifacts=run_dir.resolve().parents[2])


@click.command("probe")
@stage_options
@click.option("--name", default="prior", show_default=True,
              help="The pretraining run ARTIFACTS/<dataset>/pretrain/<name>/.")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A pretraining run directory instead of --name (its dataset comes from its run.json).")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--min-positives", type=click.IntRange(min=1), default=3, show_default=True,
              help="Macro-AUROC averages the classes with at least this many positives in the split.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
def command(ctx: StageContext, name: str, run_dir: Path | None, split: str, min_positives: int, batch_size: int,
            device: str) -> None:
    """Score a pretrained encoder on a split: zero-shot classification of the 14 observations by
    prompt similarity, a linear probe (logistic regression on frozen pooled features, fit on
    train, C chosen on val) and image-to-report Recall@1/5/10.

    Labels are labels.h5's (the project's labeler); a study's embedding is the mean over its
    views. Writes probe_<split>.json into the run directory.
    """
    if run_dir is not None:
        ctx = _run_context(ctx, run_dir)
    else:
        run_dir = ctx.dir / "pretrain" / name
    pretrain_pt = run_dir / "pretrain.pt"
    check_input(pretrain_pt, ctx.dataset)
    dataset_h5, labels_h5 = ctx.input("dataset.h5"), ctx.input("labels.h5")
    output = run_dir / f"probe_{split}.json"
    options = {"split": split, "min_positives": min_positives, "c_grid": list(C_GRID), "recall_at": list(KS),
               "bootstrap_draws": DRAWS}
    inputs = {"dataset": dataset_h5, "labels": labels_h5, "pretrain": pretrain_pt}
    if ctx.up_to_date([output], options, inputs):
        return
    try:
        model, info = load_checkpoint(pretrain_pt, device)
    except (ValueError, FileNotFoundError) as error:
        raise StageError(str(error)) from None
    with h5py.File(labels_h5, "r") as h5:
        label_ids, binary = h5["id"].asstr()[:].tolist(), h5["binary"][:]
    source = PairSource(dataset_h5, model.config.max_views, model.config.max_sentences)
    try:
        if label_ids != source.data.ids:
            raise StageError(f"{labels_h5} and {dataset_h5} list different studies; rebuild labels.h5 with "
                             f"rrg-stage label --dataset {ctx.dataset} --force")
        source.check(("train", "val", split))
        results = probe(model, source, binary, split, min_positives, batch_size)
    finally:
        source.close()
    results.update(run=run_dir.name, pretraining={k: info.get(k) for k in
                                                  ("init", "freeze_encoder", "losses", "best_epoch", "image_encoder")})
    with atomic_output(output) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    zero, linear, found = results["zero_shot"], results["linear_probe"], results["retrieval"]
    click.echo(f"[{ctx.stage}] {run_dir.name} on {ctx.dataset} {split} ({results['studies']} studies): AUROC "
               "zero-shot / linear probe, positives")
    for name_ in OBSERVATIONS:
        click.echo(f"  {name_:28s} {_fmt(zero['per_class'][name_])} / {_fmt(linear['per_class'][name_])}  "
                   f"{zero['positives'][name_]:4d}")
    click.echo(f"  macro-AUROC zero-shot {_fmt(zero['macro_auroc'])}, linear probe {_fmt(linear['macro_auroc'])}"
               f"{_span(linear['macro_interval'])} (C {linear['C']}) over {len(linear['macro_over'])} classes with "
               f">= {min_positives} positives")
    click.echo("  image-to-report " + ", ".join(f"R@{k} {found[f'recall@{k}']:.3f}" for k in KS)
               + f" (R@5{_span(found['intervals']['recall@5'])}) over {found['reports']} reports (chance R@5 "
                 f"{found['chance@5']:.3f}, from the 14 labels alone {found['label_ceiling']['recall@5']:.3f}); "
                 "brackets: 95% bootstrap interval over the studies")
    ctx.finish(output, options=options, inputs=inputs,
               counts={"studies": results["studies"], "zero_shot_macro_auroc": zero["macro_auroc"],
                       "linear_probe_macro_auroc": linear["macro_auroc"], "recall@5": found["recall@5"]})
