"""`rrg-stage compare`: one table of every run of a dataset that has metrics for a split."""

from __future__ import annotations

import json
from pathlib import Path

import click

from stages.core.artifacts import check_input, checksum
from stages.core.errors import StageError
from stages.core.stage import StageContext, stage_options
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
def command(ctx: StageContext, split: str) -> None:
    """Collect runs/*/metrics_<split>.json into results_<split>.csv and .md (and print the table).

    Every metrics file must be current (its predictions unchanged since it was scored); CE columns
    compare only between runs labelled by the same labeler, which the table names.
    """
    runs = ctx.dir / "runs"
    files = sorted(runs.glob(f"*/metrics_{split}.json"))
    if not files:
        raise StageError(f"no run under {runs} has metrics_{split}.json; score one with rrg-stage baselines "
                         f"--dataset {ctx.dataset} or rrg-stage evaluate --run {runs}/NAME --split {split}")
    for path in files:
        current(path, ctx.dataset)
    inputs = {path.parent.name: path for path in files}
    csv_path, md_path = ctx.path(f"results_{split}.csv"), ctx.path(f"results_{split}.md")
    if ctx.up_to_date([csv_path, md_path], {"split": split}, inputs):
        click.echo(md_path.read_text())
        return
    table = comparison_table({name: json.loads(path.read_text()) for name, path in inputs.items()})
    labelers = sorted(set(table["labeler"]))
    if len(labelers) > 1:
        click.echo(f"[{ctx.stage}] warning: CE columns come from different labelers {labelers}; "
                   "they compare only within one labeler")
    write_table(table, csv_path, md_path)
    for path in (csv_path, md_path):
        ctx.finish(path, options={"split": split}, inputs=inputs, counts={"runs": len(table)})
    click.echo(to_markdown(table))
