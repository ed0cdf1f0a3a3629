"""`rrg-stage evaluate`: score generated reports under the project's one protocol.

Three ways in: a run directory (`--run ARTIFACTS/<dataset>/runs/<name>`), any system's CSV
against a preprocessed dataset (`--predictions preds.csv --dataset D`), or a CSV against an R2Gen
annotation.json alone (`--predictions preds.csv --references annotation.json`, no images needed).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from stages.core.artifacts import atomic_output, check_input, read_manifest
from stages.core.config import resolve
from stages.core.errors import StageError
from stages.core.stage import StageContext, stage_options
from stages.evaluation.bootstrap import DRAWS
from stages.evaluation.clinical import load_labeler
from stages.evaluation.nlg import NlgScorer
from stages.evaluation.references import References, from_annotation, from_dataset
from stages.evaluation.runs import (PROTOCOL_FIELDS, RUN_FILE, predictions_for_run, predictions_path, read_predictions,
                                   read_run)
from stages.evaluation.score import evaluate, summary, write_scored
from stages.evaluation.viewer import load_images, write_viewer


@dataclasses.dataclass
class Scoring:
    """How to score, shared by every evaluation of one command: the labeler and the viewer's size."""

    labeler: str
    checkpoint: Path | None
    viewer_studies: int

    def options(self) -> dict[str, Any]:
        return {"labeler": self.labeler, "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "viewer_studies": self.viewer_studies, "bootstrap_draws": DRAWS}

    def inputs(self) -> dict[str, Path]:
        return {"checkpoint": self.checkpoint} if self.checkpoint else {}


def scoring_options(func: Callable) -> Callable:
    """--labeler, --checkpoint and --viewer-studies, passed on as one `Scoring` (evaluate, baselines)."""

    @click.option("--labeler", type=click.Choice(["rules", "chexbert"]), default="rules", show_default=True,
                  help="Labeler for clinical efficacy; CE numbers compare with papers only under chexbert.")
    @click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="chexbert.pth for --labeler chexbert.")
    @click.option("--viewer-studies", type=click.IntRange(min=0), default=200, show_default=True,
                  help="Studies shown in the HTML viewer (the first by id); 0 writes no viewer.")
    @functools.wraps(func)
    def wrapper(*args: Any, labeler: str, checkpoint: Path | None, viewer_studies: int, **kwargs: Any) -> Any:
        return func(*args, scoring=Scoring(labeler, checkpoint, viewer_studies), **kwargs)

    return wrapper


def output_paths(folder: Path, suffix: str, viewer: bool) -> dict[str, Path]:
    """metrics<suffix>.json, scored<suffix>.csv (both sides as scored) and viewer<suffix>.html."""
    names = {"metrics": f"metrics{suffix}.json", "scored": f"scored{suffix}.csv"}
    if viewer:
        names["viewer"] = f"viewer{suffix}.html"
    return {kind: folder / name for kind, name in names.items()}


def score_and_write(ctx: StageContext, predictions: dict[str, str], source: Path, references: References,
                    outputs: dict[str, Path], options: dict[str, Any], inputs: dict[str, Path], scoring: Scoring,
                    protocol: dict[str, Any], dataset_h5: Path | None, title: str,
                    scorer: NlgScorer | None = None) -> None:
    """Evaluate, then write the metrics, the scored CSV and the viewer, each with its manifest.

    The viewer shows dataset_h5's images, with the masks of inputs["adm"] when there is one.
    """
    labeler, labeler_name = load_labeler(scoring.labeler, scoring.checkpoint)
    result = evaluate(predictions, references, labeler, labeler_name, source=str(source), scorer=scorer,
                      protocol=protocol)
    with atomic_output(outputs["metrics"]) as tmp:
        tmp.write_text(json.dumps(result.metrics, indent=2) + "\n")
    write_scored(outputs["scored"], result)
    if "viewer" in outputs:
        shown = result.ids[:scoring.viewer_studies]
        images = load_images(dataset_h5, shown, inputs.get("adm")) if dataset_h5 else {}
        write_viewer(outputs["viewer"], result, images, title, scoring.viewer_studies)
    counts = {"studies": result.metrics["n_studies"], "split": references.split}
    for path in outputs.values():
        ctx.finish(path, options=options, inputs=inputs, counts=counts)
    click.echo(summary(result.metrics))


def adm_inputs(ctx: StageContext, given: Path | None, dataset_h5: Path) -> dict[str, Path]:
    """{"adm": path} of the masks the viewer overlays: --adm, else the dataset's adm.h5 if usable.

    Its rows must be this dataset.h5's images, so it must have been built from this very file. A
    given --adm that is not is an error; the dataset's own is then just left out, with a note.
    """
    path = given or ctx.path("adm.h5")
    if given is None and not path.exists():
        return {}
    try:
        manifest = check_input(path, ctx.dataset)
        source = manifest.get("inputs", {}).get("dataset", {}).get("path")
        if source is None or (path.parent / source).resolve() != dataset_h5.resolve():
            raise StageError(f"{path} was not built from {dataset_h5}, so its masks would not line up with the "
                             "images; pass the adm.h5 of this dataset with --adm (or rebuild it with rrg-stage "
                             "adm-masks)")
    except StageError as error:
        if given is not None:
            raise
        click.echo(f"[{ctx.stage}] no mask overlay in the viewer: {error.message}")
        return {}
    return {"adm": path}


def dataset_references(ctx: StageContext, split: str) -> tuple[References, dict[str, Path]]:
    """References from the dataset's preprocessed files, cleaned in the style they were built with."""
    dataset_h5, vocab_json = ctx.input("dataset.h5"), ctx.input("vocab.json")
    style = (read_manifest(dataset_h5) or {}).get("options", {}).get("clean_style")
    if style is None:
        raise StageError(f"{dataset_h5}'s manifest does not record clean_style; "
                         "rebuild it with rrg-stage preprocess --force")
    return from_dataset(dataset_h5, vocab_json, split, style), {"dataset": dataset_h5, "vocab": vocab_json}


def evaluate_run(ctx: StageContext, run_dir: Path, split: str, scoring: Scoring, adm: Path | None = None,
                 scorer: NlgScorer | None = None) -> None:
    """Score a run directory's predictions for `split` into metrics_/scored_/viewer_<split> beside them."""
    run = read_run(run_dir)
    predictions = predictions_for_run(run_dir, split)
    references, inputs = dataset_references(ctx, split)
    inputs.update(predictions=predictions_path(run_dir, split), run=run_dir / RUN_FILE, **scoring.inputs(),
                  **adm_inputs(ctx, adm, inputs["dataset"]))
    options = {"split": split, **scoring.options()}
    outputs = output_paths(run_dir, f"_{split}", scoring.viewer_studies > 0)
    if ctx.up_to_date(list(outputs.values()), options, inputs):
        return
    protocol = {"run": run_dir.name, **{key: run.get(key) for key in PROTOCOL_FIELDS},
                "seed": run.get("seed", ctx.seed)}
    name = run_dir.name if run["model"] == run_dir.name else f"{run_dir.name} ({run['model']})"
    score_and_write(ctx, predictions, predictions_path(run_dir, split), references, outputs, options, inputs, scoring,
                    protocol, inputs["dataset"], f"{name} on {ctx.dataset} {split}", scorer)


def _run_context(ctx: StageContext, run_dir: Path) -> StageContext:
    """The context of the dataset a run belongs to (its run.json and its place in ARTIFACTS/<dataset>/runs/)."""
    run = read_run(run_dir)
    click_ctx = click.get_current_context()
    given = click_ctx.get_parameter_source("dataset") == click.core.ParameterSource.COMMANDLINE
    if given and run["dataset"] != ctx.dataset:
        raise click.UsageError(f"--dataset {ctx.dataset} but {run_dir / RUN_FILE} says {run['dataset']!r}; "
                               "leave --dataset out with --run")
    return dataclasses.replace(ctx, dataset=run["dataset"], artifacts=run_dir.resolve().parents[2])


@click.command("evaluate")
@stage_options
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A run directory ARTIFACTS/<dataset>/runs/<name>/ with run.json and predictions_<split>.csv.")
@click.option("--predictions", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Any system's reports as a CSV (columns id,report) to score against --dataset or --references.")
@click.option("--references", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --predictions: an R2Gen annotation.json to take the references from (no images needed).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="With --predictions: output folder [default: the predictions file's folder].")
@click.option("--id-column", default="id", show_default=True, help="Predictions CSV column holding study ids.")
@click.option("--report-column", default="report", show_default=True, help="Predictions CSV column holding reports.")
@click.option("--clean-style", type=click.Choice(["iu", "mimic"]),
              help="With --references: R2Gen cleaning variant [iu for demo/iu_xray, mimic for mimic].")
@click.option("--min-count", type=int, help="With --references: vocabulary threshold [3 iu_xray, 10 mimic].")
@click.option("--max-length", type=int, help="With --references: token ids kept, BOS included [60 iu_xray, 100 mimic].")
@click.option("--adm", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="adm.h5 whose masks the viewer overlays [default: the dataset's adm.h5 when built].")
@scoring_options
def command(ctx: StageContext, run_dir: Path | None, predictions: Path | None, references: Path | None, split: str,
            out: Path | None, id_column: str, report_column: str, clean_style: str | None, min_count: int | None,
            max_length: int | None, adm: Path | None, scoring: Scoring) -> None:
    """Score generated reports: BLEU-1..4, METEOR, ROUGE-L, CIDEr and clinical efficacy.

    Every study of the split must have exactly one non-empty report (a missing one is an error,
    never a skip). Both sides follow R2Gen: predictions are cleaned, and references are what R2Gen
    decodes from its stored ids (out-of-vocabulary words as <unk>, cut to the maximum length).
    Writes metrics.json, scored.csv (both sides as scored) and viewer.html; with --run they are
    metrics_<split>.json etc. inside the run directory.
    """
    if (run_dir is None) == (predictions is None):
        raise click.UsageError("give either --run DIR or --predictions FILE")
    if run_dir is not None and (references or out):
        raise click.UsageError("--references and --out go with --predictions, not --run")
    if references is None and any(v is not None for v in (clean_style, min_count, max_length)):
        raise click.UsageError("--clean-style, --min-count and --max-length go with --references "
                               "(a dataset.h5 fixes them when it is built)")
    if run_dir is not None:
        evaluate_run(_run_context(ctx, run_dir), run_dir, split, scoring, adm)
        return

    if references is not None:
        if adm:
            raise click.UsageError("--adm needs the dataset's images; leave out --references")
        given = {"clean_style": clean_style, "min_count": min_count, "max_length": max_length}
        settings = resolve(ctx.dataset, "preprocess", given, required=tuple(given))
        refs = from_annotation(references, split, settings["clean_style"], settings["min_count"],
                               settings["max_length"])
        inputs, dataset_h5 = {"references": references}, None
        options = {key: settings[key] for key in given}
    else:
        refs, inputs = dataset_references(ctx, split)
        dataset_h5 = inputs["dataset"]
        inputs.update(adm_inputs(ctx, adm, dataset_h5))
        options = {}
    options.update(split=split, id_column=id_column, report_column=report_column, **scoring.options())
    inputs.update(predictions=predictions, **scoring.inputs())
    outputs = output_paths(out or predictions.parent, "", scoring.viewer_studies > 0)
    if ctx.up_to_date(list(outputs.values()), options, inputs):
        return
    generated = read_predictions(predictions, id_column, report_column)
    protocol = {**{key: None for key in PROTOCOL_FIELDS}, "predictions": str(predictions), "seed": ctx.seed}
    score_and_write(ctx, generated, predictions, refs, outputs, options, inputs, scoring, protocol, dataset_h5,
                    f"{predictions.name} on {ctx.dataset if dataset_h5 else references.name} {split}")
