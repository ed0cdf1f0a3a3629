"""`rrg-stage build-knowledge`: EKAGen's PKS / RKS knowledge base (knowledge.pkl)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import h5py
import joblib
import numpy as np

from stages.core.artifacts import atomic_output, read_manifest
from stages.core.errors import StageError
from stages.core.stage import StageContext, stage_options
from stages.data.h5dataset import DatasetFile
from stages.knowledge.base import KnowledgeBase, build_knowledge, expert_descriptions
from stages.labeling.observations import OBSERVATIONS, to_binary
from stages.models.text_encoders import build_text_encoder


def describe(kb: KnowledgeBase, reports: list[str]) -> str:
    """Markdown listing, per observation, the retrieved reports: judge the knowledge at a glance."""
    lines = [f"# Knowledge base: {kb.m} retrieved reports per observation (text encoder {kb.text_encoder})", ""]
    for j, name in enumerate(kb.observations):
        lines += [f"## {name} ({kb.positives[j]} positive training reports)", ""]
        for study, row, score in zip(kb.rks_ids[j], kb.rks_rows[j], kb.rks_scores[j]):
            lines.append(f"- `{study}` ({score:.2f}) {reports[row]}")
        lines.append("")
    return "\n".join(lines)


@click.command("build-knowledge")
@stage_options
@click.option("--m", "m", type=int, default=8, show_default=True, help="Retrieved reports (RKS) per observation.")
@click.option("--candidates", type=click.Choice(["positive", "all"]), default="positive", show_default=True,
              help="Retrieve among reports positive for the observation, or among all training reports.")
@click.option("--show", is_flag=True, help="Print the retrieved reports per observation (also in knowledge.md).")
def command(ctx: StageContext, m: int, candidates: str, show: bool) -> None:
    """Build PKS (expert descriptions + positive training reports) and RKS (nearest real reports).

    knowledge.pkl holds both with the study ids of the retrieved reports and the lookup that
    turns predicted labels into instance-level knowledge; knowledge.md lists the retrieved reports.
    """
    features_h5, labels_h5, dataset_h5 = ctx.input("features.h5"), ctx.input("labels.h5"), ctx.input("dataset.h5")
    options = {"m": m, "candidates": candidates}
    inputs = {"features": features_h5, "labels": labels_h5}
    output, listing = ctx.path("knowledge.pkl"), ctx.path("knowledge.md")
    if not ctx.up_to_date([output], options, inputs):
        if m < 1:
            raise click.BadParameter("must be at least 1", param_hint="--m")
        with h5py.File(labels_h5, "r") as h5:
            label_ids, splits, raw = h5["id"].asstr()[:].tolist(), h5["split"].asstr()[:], h5["raw"][:]
        feature_options = read_manifest(features_h5)["options"]
        encoder = build_text_encoder(feature_options["text_encoder"],
                                     Path(feature_options["checkpoint"]) if feature_options.get("checkpoint") else None)
        descriptions = expert_descriptions()
        prior = np.stack([encoder.embed(descriptions[o], progress=False).mean(axis=0) for o in OBSERVATIONS])
        with h5py.File(features_h5, "r") as h5:
            ids = h5["studies/id"].asstr()[:].tolist()
            if ids != label_ids:
                raise StageError(f"{labels_h5} and {features_h5} list different studies; rebuild them from one dataset.h5")
            try:
                kb = build_knowledge(h5["studies/text"], ids, splits == "train", to_binary(raw, True), prior, m,
                                     candidates, encoder.name)
            except ValueError as error:
                raise StageError(str(error)) from None
        with atomic_output(output) as tmp:
            joblib.dump(dataclasses.asdict(kb), tmp)
        with DatasetFile(dataset_h5) as data:
            reports = data.reports
        with atomic_output(listing) as tmp:
            tmp.write_text(describe(kb, reports))
        ctx.finish(output, options=options, inputs=inputs,
                   counts={"observations": len(kb.observations), "m": m, "dim": int(kb.rks.shape[-1]),
                           "train_reports": int((splits == "train").sum())})
    if show:
        click.echo(listing.read_text())
