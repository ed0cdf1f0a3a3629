"""`rrg-stage compare`: one table of every run of a dataset that has metrics for a split."""

from __future__ import annotations

import json
from pathlib import Path

import click

from stages.core.artifacts import check_input, checksum
from stages.core.errors import StageError
from stages.core.stage import StageContext, stage_options
from stages.evaluation.bootstrap import paired_differences
from stages.evaluation.score import read_scored
from stages.evaluation.table import comparison_table, to_markdown, write_table


def current(metrics: Path, dataset: str) -> None:
    """Stop unless a metrics file is whole and was scored from the predictions now in its run.

    Predictions written by hand have no manifest, so check_input cannot see that they changed;
    their checksum is compared here.
    """
    manifest = check_input(metrics, dataset)
    recorded = manifest.get("inputs", {}).get("predictions")
    if recorded and not recorded["artifact"]:
        predictions = Path(recorded["path"])
        if not predictions.exists() or checksum(predictions) != recorded["sha256"]:
            raise StageError(f"{metrics} is stale: {predictions} changed since it was scored; "
                             f"rescore it: {manifest.get('command')} --force")


@click.command("compare")
@stage_options
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--baseline", metavar="RUN",
              help="Also give every run's paired difference from this run in BLEU-4 and CE micro-F1, with a 95% "
                   "bootstrap interval that resamples the same studies for both (from their scored_<split>.csv).")
def command(ctx: StageContext, split: str, baseline: str | None) -> None:
    """Collect runs/*/metrics_<split>.json into results_<split>.csv and .md (and print the table).

    Every metrics file must be current (its predictions unchanged since it was scored); CE columns
    compare only between runs labelled by the same labeler, which the table names. The 95% columns
    are bootstrap intervals over the split's studies: with ~100 test studies they are wide, and a
    gap smaller than them is not a result.
    """
    runs = ctx.dir / "runs"
    files = sorted(runs.glob(f"*/metrics_{split}.json"))
    if not files:
        raise StageError(f"no run under {runs} has metrics_{split}.json; score one with rrg-stage baselines "
                         f"--dataset {ctx.dataset} or rrg-stage evaluate --run {runs}/NAME --split {split}")
    for path in files:
        current(path, ctx.dataset)
    inputs = {path.parent.name: path for path in files}
    if baseline is not None and baseline not in inputs:
        raise StageError(f"--baseline {baseline}: no run {runs / baseline} with metrics_{split}.json; the runs with "
                         f"them are {', '.join(inputs)}")
    options = {"split": split, "baseline": baseline}
    csv_path, md_path = ctx.path(f"results_{split}.csv"), ctx.path(f"results_{split}.md")
    if ctx.up_to_date([csv_path, md_path], options, inputs):
        click.echo(md_path.read_text())
        return
    differences = None
    if baseline is not None:
        scored = {name: read_scored(runs / name / f"scored_{split}.csv") for name in inputs}
        try:
            differences = {name: paired_differences(scores, scored[baseline])
                           for name, scores in scored.items() if name != baseline}
        except ValueError as error:
            raise StageError(f"--baseline {baseline}: {error}; rescore the runs on one dataset.h5") from None
    table = comparison_table({name: json.loads(path.read_text()) for name, path in inputs.items()}, differences,
                             baseline)
    labelers = sorted(set(table["labeler"]))
    if len(labelers) > 1:
        click.echo(f"[{ctx.stage}] warning: CE columns come from different labelers {labelers}; "
                   "they compare only within one labeler")
    write_table(table, csv_path, md_path)
    for path in (csv_path, md_path):
        ctx.finish(path, options=options, inputs=inputs, counts={"runs": len(table)})
    click.echo(to_markdown(table))
