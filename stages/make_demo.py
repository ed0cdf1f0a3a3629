"""`rrg-stage make-demo`: build the demo dataset (real IU report text, phantom radiographs)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from stages.core import artifacts
from stages.core.config import resolve
from stages.core.errors import StageError
from stages.data.openi import iter_reports_tgz, torchxrayvision_reports
from stages.phantom.demo import preview, select_studies, write_demo

_SHARED_SPLIT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "iu_xray" / "annotation.json"


@click.command("make-demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="artifacts/demo/raw",
              show_default=True, help="Folder to write the R2Gen-layout demo dataset to.")
@click.option("--n-studies", type=int,
              help="Studies to share among the splits in the pool's proportions (the test split's share "
                   "gives way to --test-studies) [400, pipelines/demo.toml].")
@click.option("--test-studies", type=int,
              help="Studies in the test split, drawn after the training and validation studies (which "
                   "it does not change); -1: the test split's share of --n-studies [300, "
                   "pipelines/demo.toml: 82 test studies could not tell the methods apart].")
@click.option("--size", type=int, help="Image side in pixels [128].")
@click.option("--abnormal-fraction", type=float,
              help="Share of each split drawn from reports with a finding; -1 keeps the natural mix "
                   "[0.7].")
@click.option("--split-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An R2Gen annotation.json whose train/val/test split to follow "
                   "[default: ../shared/data/iu_xray/annotation.json when present, else a split by id hash].")
@click.option("--reports", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="NLMCXR_reports.tgz [default: the copy inside the torchxrayvision wheel].")
@click.option("--preview", "preview_png", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a contact sheet of the first studies to this PNG.")
@click.option("--workers", type=int, default=min(4, os.cpu_count() or 1), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Rebuild even when the folder is up to date.")
def command(out: Path, n_studies: int | None, test_studies: int | None, size: int | None, abnormal_fraction: float | None, split_file: Path | None, reports: Path | None,
            preview_png: Path | None, workers: int, seed: int, force: bool) -> None:
    """Pair real Open-i report text with phantom radiographs rendered from each report's findings.

    The images are synthetic (a chest outline, lungs, heart and the findings the report names,
    placed by its side and zone words): they exist so the whole pipeline runs, is tested and is
    benchmarked on any machine. regions.h5 holds the true region of every rendered finding.
    """
    started = time.time()
    options = resolve("demo", "make-demo", {"n_studies": n_studies, "test_studies": test_studies, "size": size,
                                            "abnormal_fraction": abnormal_fraction},
                      required=("n_studies", "test_studies", "size", "abnormal_fraction"))
    if options["test_studies"] == 0 or options["test_studies"] < -1:
        raise click.BadParameter("must be -1 (proportional share) or a number of studies above 0 (evaluate and "
                                 "probe score the test split)", param_hint="--test-studies")
    if not (options["abnormal_fraction"] == -1 or 0 <= options["abnormal_fraction"] <= 1):
        raise click.BadParameter("must be -1 (natural mix) or between 0 and 1", param_hint="--abnormal-fraction")
    if split_file is None and _SHARED_SPLIT.exists():
        split_file = _SHARED_SPLIT
    reports = reports or torchxrayvision_reports()
    options.update(split_file=str(split_file) if split_file else None, seed=seed)
    inputs = {"reports": reports, **({"split_file": split_file} if split_file else {})}
    annotation = out / "annotation.json"
    if not force and artifacts.is_up_to_date(annotation, options, inputs):
        click.echo(f"[make-demo] {out} up to date; nothing to do (use --force to rebuild)")
        annotation.touch()
    else:
        fraction = None if options["abnormal_fraction"] == -1 else options["abnormal_fraction"]
        test = None if options["test_studies"] == -1 else options["test_studies"]
        studies = select_studies(list(iter_reports_tgz(reports)), options["n_studies"], split_file, seed, fraction, test)
        if not studies:
            raise StageError(f"no studies selected from {reports}; check --split-file and --n-studies")
        with artifacts.atomic_output(out) as tmp:
            counts = write_demo(tmp, studies, options["size"], seed, workers)
        artifacts.write_manifest(annotation, stage="make-demo", dataset="demo", options=options, inputs=inputs,
                                 counts={"studies": len(studies), **counts}, started=started)
        click.echo(f"[make-demo] wrote {out}: {len(studies)} studies {counts} in {time.time() - started:.1f}s")
    if preview_png:
        preview(out, preview_png)
        click.echo(f"[make-demo] preview written to {preview_png}")
