"""`rrg-stage generate`: reports for your own chest X-ray images from a trained run."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from stages.core.errors import usage_errors
from stages.evaluation.runs import read_run, run_decoding, write_predictions
from stages.generation.decoding import Decoding
from stages.training.inference import image_predictions, read_study_list


@click.command("generate")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A trained run: ARTIFACTS/<dataset>/runs/<name>/ (holds model.pt).")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write id,report CSV here instead of printing the reports.")
@click.option("--beam-size", type=int, help="Beam size (1: greedy) [default: the run's, from run.json; 3].")
@click.option("--max-length", type=int, help="Longest report in tokens [default: the model's].")
@click.option("--length-penalty", type=float,
              help="Beam search ranks by log-probability / length ** this [default: the run's, from run.json].")
@click.option("--mbr-samples", type=int,
              help="Above 0: minimum Bayes risk decoding over this many sampled reports instead of beam search "
                   "[default: the run's, from run.json].")
@click.option("--mbr-temperature", type=float, help="MBR: the samples' temperature [default: the run's, from run.json].")
@click.option("--seed", type=int, help="MBR: the samples' random seed [default: the run's].")
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
def command(run_dir: Path, inputs: tuple[Path, ...], output: Path | None, device: str, **given: int | float | None
            ) -> None:
    """Write a report for each study in INPUTS.

    INPUTS are image files (each one study), folders (each one study: its images in name order,
    frontal first for IU-style models) or a CSV with columns id,image_path. Images are read and
    resized exactly as preprocessing does; label-conditioned models use the dataset's diagnosis
    classifier for their labels, never a report.
    """
    studies = read_study_list(inputs)
    decoding = Decoding(**{**run_decoding(read_run(run_dir)),
                           **{key: value for key, value in given.items() if value is not None}})
    with usage_errors():
        decoding.validate()
    reports, findings = image_predictions(run_dir, studies, decoding, device)
    if output is not None:
        write_predictions(output, reports)
        click.echo(f"[generate] wrote {len(reports)} reports to {output}")
        return
    for study, _ in studies:
        click.echo(f"== {study}")
        if study in findings:
            click.echo(f"   predicted findings: {', '.join(findings[study]) or 'none'}")
        click.echo(f"   {reports[study]}")
