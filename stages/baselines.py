"""`rrg-stage baselines`: most-frequent-report and nearest-neighbour retrieval runs, scored on test."""

from __future__ import annotations

import json
from pathlib import Path

import click

from stages.core.artifacts import atomic_output
from stages.core.stage import StageContext, stage_options
from stages.data.h5dataset import DatasetFile
from stages.evaluate import Scoring, evaluate_run, scoring_options
from stages.evaluation.baselines import BASELINES, EVAL_SPLITS, baseline_predictions
from stages.evaluation.nlg import NlgScorer
from stages.evaluation.runs import RUN_FILE, predictions_path, write_predictions
from stages.features.extract import Features

DESCRIPTIONS = {
    "most-frequent": "the most common training report (cleaned text) for every study",
    "nearest-neighbour": "the training report of the study with the most similar visual feature (cosine over the "
                         "mean of its views' pooled features in features.h5)",
}


def write_runs(ctx: StageContext, runs: Path, inputs: dict[str, Path]) -> None:
    """Predictions for val and test and run.json of each baseline, each with its manifest."""
    with DatasetFile(inputs["dataset"]) as data:
        ids, splits, reports = data.ids, data.splits, data.reports
    visual = Features.load(inputs["features"]).study_visual()
    for name, by_split in baseline_predictions(ids, splits, reports, visual).items():
        for split, predictions in by_split.items():
            path = predictions_path(runs / name, split)
            write_predictions(path, predictions)
            ctx.finish(path, options={}, inputs=inputs, counts={"studies": len(predictions)})
        run_json = runs / name / RUN_FILE
        with atomic_output(run_json) as tmp:
            tmp.write_text(json.dumps({"dataset": ctx.dataset, "model": name, "oracle": False,
                                       "description": DESCRIPTIONS[name]}, indent=2) + "\n")
        ctx.finish(run_json, options={}, inputs=inputs, counts={"splits": len(by_split)})


@click.command("baselines")
@stage_options
@scoring_options
def command(ctx: StageContext, scoring: Scoring) -> None:
    """Write the runs most-frequent and nearest-neighbour (val and test predictions) and score them on test.

    The floor every model must clear, under the same protocol: runs/<baseline>/ holds
    predictions_<split>.csv, run.json and metrics_test.json with a scored CSV and a viewer.
    """
    inputs = {"dataset": ctx.input("dataset.h5"), "features": ctx.input("features.h5")}
    runs = ctx.dir / "runs"
    outputs = [predictions_path(runs / name, split) for name in BASELINES for split in EVAL_SPLITS]
    outputs += [runs / name / RUN_FILE for name in BASELINES]
    if not ctx.up_to_date(outputs, {}, inputs):
        write_runs(ctx, runs, inputs)
    with NlgScorer() as scorer:  # one Java start for both runs
        for name in BASELINES:
            click.echo(f"[{ctx.stage}] {name}:")
            evaluate_run(ctx, runs / name, "test", scoring, scorer=scorer)
