"""`rrg-stage label`: CheXpert observations for every study (labels.h5), or for a user's CSV."""

from __future__ import annotations

from pathlib import Path

import click
import h5py
import numpy as np
import pandas as pd

from stages.core.artifacts import atomic_output
from stages.core.errors import StageError
from stages.core.stage import StageContext, stage_options
from stages.data.h5dataset import DatasetFile
from stages.labeling import get_labeler
from stages.labeling.observations import BLANK, CLASS_NAMES, NEGATIVE, OBSERVATIONS, POSITIVE, UNCERTAIN, to_binary
from stages.labeling.summary import plot_prevalence, prevalence

REPORT_COLUMNS = ("Report Impression", "report", "Report", "findings", "text")
CSV_VALUES = {BLANK: "", POSITIVE: "1", NEGATIVE: "0", UNCERTAIN: "-1"}


def _labeler(name: str, checkpoint: Path | None):
    try:
        return get_labeler(name, checkpoint)
    except (ValueError, FileNotFoundError) as error:
        raise StageError(str(error)) from None


def label_csv(input_csv: Path, output_csv: Path, column: str | None, labeler_name: str,
              checkpoint: Path | None) -> None:
    """Label the reports of a user's CSV; writes its columns plus 14 CheXbert-style ones."""
    try:
        table = pd.read_csv(input_csv, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise StageError(f"cannot read {input_csv} as CSV ({error})") from None
    column = column or next((c for c in REPORT_COLUMNS if c in table.columns), None)
    if column is None or column not in table.columns:
        raise StageError(f"{input_csv} has no report column (columns: {list(table.columns)}); "
                         f"name it with --report-column")
    reports = table[column].fillna("").tolist()
    empty = [i for i, r in enumerate(reports) if not r.strip()]
    if empty:
        click.echo(f"[label] {len(empty)} empty report(s) in {input_csv} (rows {[i + 2 for i in empty[:10]]}) "
                   "are left blank for every observation")
    raw = _labeler(labeler_name, checkpoint).label(reports)
    raw[empty] = BLANK
    for j, name in enumerate(OBSERVATIONS):
        table[name] = [CSV_VALUES[int(v)] for v in raw[:, j]]
    with atomic_output(output_csv) as tmp:
        table.to_csv(tmp, index=False)
    click.echo(f"[label] wrote {output_csv}: {len(table)} reports, 1 positive / 0 negative / -1 uncertain / "
               "empty blank")


@click.command("label")
@stage_options
@click.option("--labeler", "labeler_name", type=click.Choice(["rules", "chexbert"]), default="rules",
              show_default=True, help="rules: the project's offline labeler; chexbert: needs --checkpoint.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="The official CheXbert weights (chexbert.pth) for --labeler chexbert.")
@click.option("--uncertain-as-positive", is_flag=True,
              help="Binary form counts uncertain mentions as positive (XProNet's prototype convention).")
@click.option("--input", "input_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Standalone mode: label this CSV of reports instead of a dataset.")
@click.option("--output", "output_csv", type=click.Path(dir_okay=False, path_type=Path),
              help="Standalone mode: where to write the labelled CSV.")
@click.option("--report-column", help="Standalone mode: the CSV column holding report text "
                                      f"[default: the first of {', '.join(REPORT_COLUMNS)}].")
def command(ctx: StageContext, labeler_name: str, checkpoint: Path | None, uncertain_as_positive: bool,
            input_csv: Path | None, output_csv: Path | None, report_column: str | None) -> None:
    """Label the 14 CheXpert observations of every study into labels.h5.

    The original report text is labelled (not the R2Gen-cleaned one, whose lost commas blur
    negation scope). Raw classes (blank / positive / negative / uncertain) and the binary form
    (positive -> 1, No Finding -> 1 when nothing is positive) are stored, with a prevalence table per split and
    a bar chart. With --input/--output it labels your own CSV instead (CheXbert's CSV format).
    """
    if input_csv or output_csv:
        if not (input_csv and output_csv):
            raise click.UsageError("standalone mode needs both --input and --output")
        label_csv(input_csv, output_csv, report_column, labeler_name, checkpoint)
        return
    dataset_h5 = ctx.input("dataset.h5")
    options = {"labeler": labeler_name, "checkpoint": str(checkpoint) if checkpoint else None,
               "uncertain_as_positive": uncertain_as_positive}
    output = ctx.path("labels.h5")
    inputs = {"dataset": dataset_h5, **({"checkpoint": checkpoint} if checkpoint else {})}
    if ctx.up_to_date([output], options, inputs):
        return
    with DatasetFile(dataset_h5) as data:  # the report as written: its punctuation bounds negation scope
        ids, splits, reports = data.ids, data.splits, data.raw_reports
    raw = _labeler(labeler_name, checkpoint).label(reports)
    binary = to_binary(raw, uncertain_as_positive)
    with atomic_output(output) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("id", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype())
        h5.create_dataset("split", data=np.asarray(splits, dtype=object), dtype=h5py.string_dtype())
        h5.create_dataset("raw", data=raw.astype(np.int8))
        h5.create_dataset("binary", data=binary)
        h5.attrs.update(observations=list(OBSERVATIONS), classes=list(CLASS_NAMES), labeler=labeler_name,
                        uncertain_as_positive=uncertain_as_positive)
    table = prevalence(raw, splits)
    click.echo(table.to_string())
    plot_prevalence(table, ctx.path("label_prevalence.png"), f"{ctx.dataset}: label prevalence ({labeler_name})")
    counts = {"studies": len(ids), "positive_findings": int((raw[:, :-1] == POSITIVE).sum()),
              "uncertain_findings": int((raw[:, :-1] == UNCERTAIN).sum())}
    ctx.finish(output, options=options, inputs=inputs, counts=counts)
