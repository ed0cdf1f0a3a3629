"""`rrg-stage adm-masks`: EKAGen's diagnosis classifier (diagnosis.pt) and ADM masks (adm.h5)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click
import h5py
import numpy as np
import torch

from stages.adm.backbone import GRIDS
from stages.adm.classifier import (Diagnosis, TrainConfig, TrainData, load_diagnosis, predict_labels, read_rows,
                                   save_diagnosis, train_diagnosis)
from stages.adm.masks import read_masks, write_adm
from stages.adm.metrics import (SHORT, describe, find_regions, load_regions, overlay_grid, pick_examples,
                                pointing_hits, score_test)
from stages.core.artifacts import atomic_output, read_manifest, write_json_atomic
from stages.core.config import resolve
from stages.core.errors import StageError
from stages.core.stage import StageContext, stage_options
from stages.data.h5dataset import DatasetFile
from stages.labeling.observations import OBSERVATIONS
from stages.models.image_encoders import ENCODERS, build_image_encoder

# Used where neither the command line nor pipelines/<dataset>.toml [adm-masks] gives a value.
DEFAULTS: dict[str, Any] = {"epochs": 6, "batch_size": 32, "lr": 1e-3, "grid": "fine", "cam_threshold": 0.6,
                            "dilation": 5, "theta": 0.4}


def _options(dataset: str, given: dict[str, Any]) -> dict[str, Any]:
    options = resolve(dataset, "adm-masks", given)
    options.update({k: v for k, v in DEFAULTS.items() if options.get(k) is None})
    checks = [("epochs", options["epochs"] >= 1, "must be at least 1"),
              ("batch-size", options["batch_size"] >= 1, "must be at least 1"),
              ("lr", options["lr"] > 0, "must be positive"),
              ("grid", options["grid"] in GRIDS, f"must be one of {', '.join(GRIDS)}"),
              ("cam-threshold", 0 <= options["cam_threshold"] <= 1, "must lie in [0, 1]"),
              ("dilation", options["dilation"] >= 1 and options["dilation"] % 2 == 1, "must be odd and >= 1"),
              ("theta", 0 <= options["theta"] <= 1, "must lie in [0, 1]")]
    for name, ok, message in checks:
        if not ok:
            raise click.BadParameter(message, param_hint=f"--{name}")
    return options


def _train(ctx: StageContext, data: DatasetFile, binary: np.ndarray, options: dict[str, Any], key: str,
           device: str) -> Diagnosis:
    train = np.flatnonzero(data.splits[data.image_study] == "train")
    val = np.flatnonzero(data.splits[data.image_study] == "val")
    if not len(train) or not len(val):
        raise StageError(f"{data.path} needs images in both the train and the val split "
                         f"(has {len(train)} and {len(val)}): the classifier is selected on validation")
    try:
        encoder = build_image_encoder(options["backbone"], options["weights"])
    except (ValueError, FileNotFoundError) as error:
        raise StageError(str(error)) from None
    config = TrainConfig(epochs=options["epochs"], batch_size=options["batch_size"], lr=options["lr"],
                         grid=options["grid"], seed=ctx.seed)
    click.echo(f"[{ctx.stage}] training a {options['backbone']} classifier on {len(train)} images "
               f"({len(val)} for validation), {config.epochs} epochs")
    state = ctx.path("diagnosis.pt.partial")
    if ctx.force:
        state.unlink(missing_ok=True)
    diagnosis = train_diagnosis(TrainData(data.pixels, data.image_study, binary[data.image_study], train, val),
                                encoder, config, state_path=state, resume_key=key, device=device)
    info = diagnosis.info
    if info["val_macro_auroc"] is None:
        click.echo(f"[{ctx.stage}] warning: no class has both positives and negatives in the val split; "
                   "the last epoch was kept and thresholds fell back to 0.5")
    click.echo(f"[{ctx.stage}] kept epoch {info['best_epoch']} (val macro-AUROC "
               f"{_fmt(info['val_macro_auroc'])}); thresholds image / study:")
    for k, name in enumerate(OBSERVATIONS):
        click.echo(f"  {name:28s} val AUROC {_fmt(info['val_study_auroc'][name])}  "
                   f"{diagnosis.thresholds[k]:.3f} / {diagnosis.study_thresholds[k]:.3f}  "
                   f"({info['val_positives_study'][name]} val positives)")
    return diagnosis


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def _score(ctx: StageContext, dataset_h5: Path, adm_h5: Path, data: DatasetFile, binary: np.ndarray,
           diagnosis: Diagnosis) -> dict[str, Any] | None:
    """adm_metrics.json and adm_overlays.png where true regions exist (the demo)."""
    with h5py.File(dataset_h5, "r") as h5:
        paths, views = h5["images/path"].asstr()[:], h5["images/view"].asstr()[:]
    regions_h5 = find_regions(paths.tolist(), ctx.dir / "raw" / "regions.h5")
    test = np.flatnonzero(data.splits[data.image_study] == "test")
    if regions_h5 is None or not len(test):
        return None
    regions, found = load_regions(regions_h5, paths[test].tolist())
    if not found.any() or regions.shape[-1] != data.image_size:
        click.echo(f"[{ctx.stage}] {regions_h5} does not match these images; no localisation scores")
        return None
    with h5py.File(adm_h5, "r") as h5:
        probs, cam_max = h5["probs"][test], h5["cam_max"][test]
    masks = read_masks(adm_h5, test)
    study = data.image_study[test]
    metrics = score_test(probs=probs, cam_max=cam_max, masks=masks, image_study=study, views=views[test],
                         study_targets=binary, regions=regions, found=found)
    metrics["regions_file"] = str(regions_h5)
    write_json_atomic(ctx.path("adm_metrics.json"), metrics)
    rows = pick_examples(study, binary, regions.any(axis=(1, 2, 3)) & found)
    images = read_rows(data.pixels, test[rows])
    predicted = predict_labels(images, diagnosis)[0]
    scored, hit = pointing_hits(cam_max[rows], binary[study[rows]], regions[rows], 2)
    titles = [f"{data.ids[study[i]]} {views[test[i]]}  mask {masks[i].mean():.0%}\n"
              f"pred: {describe(predicted[j])}\ntrue: {describe(binary[study[i]])}" for j, i in enumerate(rows)]
    shown = scored & (cam_max[rows, :, 0] >= 0)  # an all-zero Grad-CAM has no peak to draw (a miss)
    targets = [(cam_max[i][shown[j]], hit[j][shown[j]]) for j, i in enumerate(rows)]
    overlay_grid(ctx.path("adm_overlays.png"), images, masks[rows], regions[rows].any(axis=1), titles, targets)
    return metrics


def _report(ctx: StageContext, metrics: dict[str, Any]) -> None:
    per_class = metrics["classifier"]["per_class"]
    click.echo(f"[{ctx.stage}] test split ({metrics['test_studies']} studies): AUROC study / image, positives")
    for k, name in enumerate(OBSERVATIONS):
        row = per_class[name]
        click.echo(f"  {SHORT[k]:10s} {_fmt(row['auroc_study'])} / {_fmt(row['auroc_image'])}  "
                   f"{row['test_positive_studies']:4d}")
    pointing, iou = metrics["pointing_game"], metrics["mask_iou"]
    views = ", ".join(f"{v} {_fmt(pointing[v]['hit_rate'])} ({pointing[v]['hits']}/{pointing[v]['total']}; "
                      f"peak pixel inside {_fmt(pointing[v]['hit_rate_inside'])}; "
                      f"centre {_fmt(pointing[v]['centre_baseline'])})"
                      for v in pointing if isinstance(pointing[v], dict) and "hit_rate" in pointing[v])
    click.echo(f"  macro-AUROC {_fmt(metrics['classifier']['macro_auroc'])} over "
               f"{', '.join(metrics['classifier']['macro_over']) or 'no class'}")
    click.echo(f"  pointing game: {views}")
    click.echo(f"  mask IoU with true regions: " + ", ".join(f"{v} {_fmt(iou[v]['mean_iou'])}" for v in iou))
    click.echo(f"[{ctx.stage}] look at {ctx.path('adm_overlays.png')}; all numbers in {ctx.path('adm_metrics.json')}")


@click.command("adm-masks")
@stage_options
@click.option("--backbone", type=click.Choice(ENCODERS), default="efficientnet-lite0", show_default=True,
              help="Classifier encoder; efficientnet-lite0 starts from ImageNet weights offline, the others "
                   "need --weights.")
@click.option("--weights", help="Encoder weights for --backbone: a file (ImageNet or CheXpert-trained) or 'random'.")
@click.option("--classifier", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Use this diagnosis.pt instead of training one (the training options are then ignored).")
@click.option("--epochs", type=int, help=f"Training epochs [default: {DEFAULTS['epochs']}, or the dataset's "
                                         "pipelines/<dataset>.toml].")
@click.option("--batch-size", type=int, help=f"Images per batch [default: {DEFAULTS['batch_size']}].")
@click.option("--lr", type=float, help=f"Peak AdamW learning rate (warm-up, then cosine) [default: {DEFAULTS['lr']}].")
@click.option("--grid", type=click.Choice(GRIDS),
              help="Where the classifier's encoder ends, the grid Grad-CAM reads: 'truncated' after its last "
                   "stride-16 stage, 'fine' the same made stride 8 by dilation (localises best, 3x the "
                   "step time), 'dilated' (the whole encoder at stride 16) or 'full' (stride 32) "
                   f"[default: {DEFAULTS['grid']}].")
@click.option("--cam-threshold", type=float,
              help=f"A class's region: its Grad-CAM, scaled to [0, 1], at or above this [default: "
                   f"{DEFAULTS['cam_threshold']}].")
@click.option("--dilation", type=int, help=f"Side of the square that dilates the united mask, pixels (odd) "
                                           f"[default: {DEFAULTS['dilation']}].")
@click.option("--theta", type=float, help=f"Images whose mask covers more than this fraction are enhanced "
                                          f"(recorded in adm.h5 for training) [default: {DEFAULTS['theta']}].")
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
def command(ctx: StageContext, backbone: str, weights: str | None, classifier: Path | None, epochs: int | None,
            batch_size: int | None, lr: float | None, grid: str | None, cam_threshold: float | None,
            dilation: int | None, theta: float | None, device: str) -> None:
    """Train the 14-label diagnosis classifier and make Grad-CAM aggregate masks of every image.

    diagnosis.pt holds the classifier (selected on validation macro-AUROC) with per-class
    thresholds (best validation F1) for images and for studies; `predict_labels` uses it for
    test-time labels. adm.h5 holds, per image, the probabilities, each class's Grad-CAM peak and
    the union of the predicted findings' CAM regions, dilated. On the demo the stage also scores
    them against the true regions (adm_metrics.json) and draws adm_overlays.png.
    """
    dataset_h5, labels_h5 = ctx.input("dataset.h5"), ctx.input("labels.h5")
    options = _options(ctx.dataset, dict(backbone=backbone, weights=weights, epochs=epochs, batch_size=batch_size,
                                         lr=lr, grid=grid, cam_threshold=cam_threshold,
                                         dilation=dilation, theta=theta))
    inputs = {"dataset": dataset_h5, "labels": labels_h5}
    if classifier is not None:
        train_options: dict[str, Any] = {"classifier": str(classifier)}
        train_inputs = {**inputs, "classifier": classifier}
    else:
        train_options = {k: options[k] for k in ("backbone", "weights", "epochs", "batch_size", "lr", "grid")}
        train_options["seed"] = ctx.seed
        train_inputs = {**inputs, **({"weights": Path(options["weights"])}
                                     if options["weights"] not in (None, "random") else {})}
    diagnosis_pt, adm_h5 = ctx.path("diagnosis.pt"), ctx.path("adm.h5")
    mask_options = {k: options[k] for k in ("cam_threshold", "dilation", "theta")}
    with h5py.File(labels_h5, "r") as h5:
        label_ids, binary = h5["id"].asstr()[:].tolist(), h5["binary"][:]
    with DatasetFile(dataset_h5) as data:
        if label_ids != data.ids:
            raise StageError(f"{labels_h5} and {dataset_h5} list different studies; rebuild labels.h5 with "
                             f"rrg-stage label --dataset {ctx.dataset} --force")
        if ctx.up_to_date([diagnosis_pt], train_options, train_inputs):
            diagnosis = load_diagnosis(diagnosis_pt, data.image_size, device)
        elif classifier is not None:
            try:
                diagnosis = load_diagnosis(classifier, data.image_size, device)
            except (ValueError, FileNotFoundError) as error:
                raise StageError(str(error)) from None
            with atomic_output(diagnosis_pt) as tmp:
                shutil.copyfile(classifier, tmp)
            ctx.finish(diagnosis_pt, options=train_options, inputs=train_inputs,
                       counts={"backbone": diagnosis.backbone, "image_size": diagnosis.image_size})
        else:
            key = json.dumps({"options": train_options,
                              "inputs": {n: (read_manifest(p) or {}).get("sha256") for n, p in train_inputs.items()}},
                             sort_keys=True)
            diagnosis = _train(ctx, data, binary, options, key, device)
            with atomic_output(diagnosis_pt) as tmp:
                save_diagnosis(diagnosis, tmp)
            ctx.path("diagnosis.pt.partial").unlink(missing_ok=True)
            ctx.finish(diagnosis_pt, options=train_options, inputs=train_inputs,
                       counts={"backbone": diagnosis.backbone, "image_size": diagnosis.image_size,
                               "best_epoch": diagnosis.info["best_epoch"],
                               "val_macro_auroc": diagnosis.info["val_macro_auroc"]})
        mask_inputs = {**inputs, "diagnosis": diagnosis_pt}
        if ctx.up_to_date([adm_h5], mask_options, mask_inputs):
            return
        key = json.dumps({"options": mask_options, "diagnosis": read_manifest(diagnosis_pt)["sha256"]}, sort_keys=True)
        counts = write_adm(adm_h5, data.pixels, data.image_study, diagnosis, batch_size=options["batch_size"],
                           key=key, **mask_options)
        metrics = _score(ctx, dataset_h5, adm_h5, data, binary, diagnosis)
    extra = None
    if metrics is not None:
        _report(ctx, metrics)
        extra = {"metrics": {"test_macro_auroc": metrics["classifier"]["macro_auroc"],
                             "pointing_game": {v: metrics["pointing_game"][v]["hit_rate"]
                                               for v in metrics["mask_iou"]},
                             "mask_iou": {v: metrics["mask_iou"][v]["mean_iou"] for v in metrics["mask_iou"]}}}
    ctx.finish(adm_h5, options=mask_options, inputs=mask_inputs, counts=counts, extra=extra)
