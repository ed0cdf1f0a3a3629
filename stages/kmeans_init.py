"""`rrg-stage kmeans-init`: XProNet's prototype matrix initialised by k-means (prototypes.pkl)."""

from __future__ import annotations

import dataclasses

import click
import h5py
import joblib
import numpy as np

from stages.core.artifacts import atomic_output
from stages.core.errors import StageError
from stages.core.stage import StageContext, stage_options
from stages.features.extract import Features
from stages.labeling.observations import OBSERVATIONS, to_binary
from stages.prototypes.kmeans import cross_modal, init_prototypes, plot_projection


@click.command("kmeans-init")
@stage_options
@click.option("--k", type=int, default=len(OBSERVATIONS), show_default=True,
              help="Number of prototype groups: 14 = one per label; another value forms groups by a global k-means.")
@click.option("--per-group", type=int, default=20, show_default=True,
              help="Prototypes per group (even: half from original, half from flipped images).")
def command(ctx: StageContext, k: int, per_group: int) -> None:
    """Cluster the training split's concatenated visual + report features into prototypes per group.

    Writes prototypes.pkl (matrix, group sizes, inertia, fallbacks for small groups) and
    prototypes_pca.png, a 2-D projection of features and prototypes coloured by group.
    """
    features_h5, labels_h5 = ctx.input("features.h5"), ctx.input("labels.h5")
    options = {"k": k, "per_group": per_group, "seed": ctx.seed}
    inputs = {"features": features_h5, "labels": labels_h5}
    output = ctx.path("prototypes.pkl")
    if ctx.up_to_date([output], options, inputs):
        return
    if k < 1:
        raise click.BadParameter("must be at least 1", param_hint="--k")
    features = Features.load(features_h5)
    with h5py.File(labels_h5, "r") as h5:
        ids, splits, raw = h5["id"].asstr()[:].tolist(), h5["split"].asstr()[:], h5["raw"][:]
    if ids != features.ids:
        raise StageError(f"{labels_h5} and {features_h5} list different studies; rebuild both from the same dataset.h5")
    train = np.flatnonzero(splits == "train")
    binary = to_binary(raw[train], uncertain_as_positive=True)
    try:
        prototypes, members = init_prototypes(
            features.study_visual()[train], features.study_visual(flipped=True)[train], features.text[train],
            binary, list(OBSERVATIONS), k, per_group, ctx.seed)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--per-group") from None
    for group, note in prototypes.fallback.items():
        click.echo(f"[kmeans-init] {group}: {note}")
    with atomic_output(output) as tmp:
        joblib.dump(dataclasses.asdict(prototypes), tmp)
    plot_projection(cross_modal(features.study_visual()[train], features.text[train]), members, prototypes,
                    ctx.path("prototypes_pca.png"))
    for name, n, inertia in zip(prototypes.groups, prototypes.counts, prototypes.inertia):
        click.echo(f"  {name:28s} {n:6d} samples  inertia {inertia:10.2f}")
    ctx.finish(output, options=options, inputs=inputs,
               counts={"groups": k, "per_group": per_group, "dim": int(prototypes.matrix.shape[-1]),
                       "train_studies": int(len(train)), "fallback_groups": len(prototypes.fallback)})
