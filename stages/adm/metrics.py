"""Scoring the diagnosis classifier and its masks against the demo's true finding regions.

Only the demo has ground-truth regions (the phantom renderer writes `regions.h5`), so this is
where Grad-CAM localisation can be checked at all:
- AUROC per class on the test split, study level (maximum probability over the views, as the
  labels later stages use) and image level; macro-AUROC over classes with enough positives;
- pointing game: for every test image and every class that is positive in the study's labels
  and has a true region in that image, does the class's Grad-CAM maximum fall inside the region
  (grown by `tolerance` pixels, since the maximum is a feature-grid cell centre)? Frontal and
  lateral views are scored separately, each beside the hit rate of always pointing at the image
  centre, the baseline a map must beat to show it localises anything;
- IoU of the aggregate mask with the union of the image's true regions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stages.adm.classifier import class_aurocs, macro, pool_studies
from stages.core.artifacts import save_figure
from stages.labeling.observations import NO_FINDING, OBSERVATIONS

SHORT = ("ECM", "Cardiomeg", "Opacity", "Lesion", "Edema", "Consol", "Pneumonia", "Atelect", "PTX", "Effusion",
         "PlOther", "Fracture", "Device", "NoFinding")


def image_key(path: str) -> str:
    """'<study>/<file>' of an image path: the part after its last `images/` folder."""
    parts = Path(path).parts
    if "images" in parts:
        return "/".join(parts[len(parts) - parts[::-1].index("images"):])
    return "/".join(parts[-2:])


def find_regions(image_paths: Sequence[str], fallback: Path | None = None) -> Path | None:
    """The regions.h5 of the raw folder the images came from (the parent of `images/`), else `fallback`."""
    for parent in Path(image_paths[0]).parents if image_paths else ():
        if parent.name == "images" and (parent.parent / "regions.h5").is_file():
            return parent.parent / "regions.h5"
    return fallback if fallback is not None and fallback.is_file() else None


def load_regions(path: Path, image_paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """((n, 14, S, S) bool true regions, (n,) bool found) for these images, matched by '<study>/<file>'.

    Reads only the rows it needs (regions.h5 stores them bit-packed along the last axis).
    """
    with h5py.File(path, "r") as h5:
        size = int(h5.attrs["size"])
        row_of = {key: i for i, key in enumerate(h5["image_path"].asstr()[:])}
        rows = np.asarray([row_of.get(image_key(p), -1) for p in image_paths])
        found = rows >= 0
        regions = np.zeros((len(image_paths), len(OBSERVATIONS), size, size), dtype=bool)
        if found.any():
            unique, inverse = np.unique(rows[found], return_inverse=True)
            packed = h5["regions"][unique][inverse]
            regions[found] = np.unpackbits(packed, axis=-1)[..., :size].astype(bool)
    return regions, found


def pointing_hits(cam_max: np.ndarray, targets: np.ndarray, regions: np.ndarray,
                  tolerance: int) -> tuple[np.ndarray, np.ndarray]:
    """((n, K) bool scored, (n, K) bool hit): scored where the label is positive and a region exists."""
    scored = targets.astype(bool) & regions.any(axis=(-2, -1))
    hit = np.zeros_like(scored)
    size = regions.shape[-1]
    for i, k in zip(*np.nonzero(scored)):
        r, c = (int(v) for v in cam_max[i, k])
        if r < 0:
            continue
        window = regions[i, k, max(r - tolerance, 0):min(r + tolerance + 1, size),
                         max(c - tolerance, 0):min(c + tolerance + 1, size)]
        hit[i, k] = bool(window.any())
    return scored, hit


def mask_iou(masks: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(n,) IoU of each mask with its true union; NaN where both are empty."""
    inter = (masks & truth).sum(axis=(-2, -1))
    union = (masks | truth).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def score_test(*, probs: np.ndarray, cam_max: np.ndarray, masks: np.ndarray, image_study: np.ndarray,
               views: np.ndarray, study_targets: np.ndarray, regions: np.ndarray, found: np.ndarray,
               min_positives: int = 10, tolerance: int = 2) -> dict[str, Any]:
    """Every number of adm_metrics.json for the test images given (rows aligned across arrays).

    `study_targets` is (n_studies, 14) binary labels indexed by `image_study`.
    """
    studies, pooled = pool_studies(probs, image_study)
    truth = study_targets[studies]
    study_auc = class_aurocs(truth, pooled)
    image_targets = study_targets[image_study]
    image_auc = class_aurocs(image_targets, probs)
    positives = truth.sum(axis=0).astype(int)
    eligible = [k for k in range(len(OBSERVATIONS)) if positives[k] >= min_positives and study_auc[k] is not None]
    out: dict[str, Any] = {
        "test_studies": int(len(studies)), "test_images": int(len(probs)),
        "classifier": {
            "level": "study (maximum probability over the study's views)",
            "per_class": {name: {"auroc_study": None if study_auc[k] is None else round(study_auc[k], 4),
                                 "auroc_image": None if image_auc[k] is None else round(image_auc[k], 4),
                                 "test_positive_studies": int(positives[k])}
                          for k, name in enumerate(OBSERVATIONS)},
            "macro_auroc": macro([study_auc[k] for k in eligible]),
            "macro_over": [OBSERVATIONS[k] for k in eligible],
            "macro_rule": f"classes with >= {min_positives} positive test studies",
            "macro_auroc_all_defined": macro(study_auc),
        },
    }
    scored, hit = pointing_hits(cam_max, image_targets, regions, tolerance)
    scored &= found[:, None]
    centre = np.full_like(cam_max, regions.shape[-1] // 2)
    centre_hit = pointing_hits(centre, image_targets, regions, tolerance)[1] & scored
    inside = pointing_hits(cam_max, image_targets, regions, 0)[1] & scored
    pointing: dict[str, Any] = {"tolerance_px": tolerance,
                                "rule": "positive label with a true region in the image; the maximum of the class's "
                                        "signed Grad-CAM map (before its ReLU) inside the region grown by "
                                        "tolerance_px (hit_rate_inside: the peak pixel itself)"}
    truth_union = regions.any(axis=1)
    iou = mask_iou(masks, truth_union)
    has_region = truth_union.any(axis=(-2, -1)) & found
    localisation: dict[str, Any] = {}
    for view in ("all", *sorted(set(views.tolist()))):
        rows = np.ones(len(views), bool) if view == "all" else views == view
        per_class = {OBSERVATIONS[k]: {"hits": int(hit[rows, k].sum()), "total": int(scored[rows, k].sum()),
                                       "rate": _rate(int(hit[rows, k].sum()), int(scored[rows, k].sum()))}
                     for k in range(len(OBSERVATIONS)) if scored[rows, k].any()}
        pointing[view] = {"hit_rate": _rate(int(hit[rows].sum()), int(scored[rows].sum())),
                          "hits": int(hit[rows].sum()), "total": int(scored[rows].sum()),
                          "hit_rate_inside": _rate(int(inside[rows].sum()), int(scored[rows].sum())),
                          "centre_baseline": _rate(int(centre_hit[rows].sum()), int(scored[rows].sum())),
                          "per_class": per_class}
        normal = rows & found & ~has_region
        localisation[view] = {
            "mean_iou": None if not (rows & has_region).any() else round(float(np.nanmean(iou[rows & has_region])), 4),
            "images_with_regions": int((rows & has_region).sum()),
            "mean_mask_area": round(float(masks[rows].mean()), 4) if rows.any() else None,
            "mean_mask_area_without_findings": round(float(masks[normal].mean()), 4) if normal.any() else None,
        }
    out["pointing_game"] = pointing
    out["mask_iou"] = localisation
    out["regions_matched"] = int(found.sum())
    return out


def overlay_grid(path: Path, images: np.ndarray, masks: np.ndarray, truth: np.ndarray, titles: Sequence[str],
                 targets: Sequence[tuple[np.ndarray, np.ndarray]], columns: int = 4) -> None:
    """A grid of images with the mask filled in colour, true regions outlined and Grad-CAM peaks.

    `targets[i]` is (points (p, 2), hit (p,) bool) of image i's pointing-game targets: drawn as
    green plus signs when inside their region, magenta crosses when not.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 3.35 * rows), squeeze=False)
    overlay = np.zeros((*images.shape[1:], 4), dtype=np.float32)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, mask, region, title, (points, hit) in zip(axes.flat, images, masks, truth, titles, targets):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        overlay[:] = 0
        overlay[mask] = (1.0, 0.35, 0.0, 0.38)
        ax.imshow(overlay, interpolation="nearest")
        if region.any():
            ax.contour(region.astype(np.float32), levels=[0.5], colors=["#00e5ff"], linewidths=0.9)
        for (r, c), ok in zip(points, hit):
            ax.plot(c, r, "+" if ok else "x", color="#39ff14" if ok else "#ff00ff", markersize=9, mew=2)
        ax.set_title(title, fontsize=7, loc="left")
    fig.suptitle("ADM masks on test images: orange = aggregate mask, cyan outline = true regions, "
                 "+ green / x magenta = Grad-CAM peak of a positive finding inside / outside its region",
                 fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    save_figure(fig, path, dpi=110)


def describe(labels: np.ndarray) -> str:
    """Short names of the positive classes of one binary label row."""
    names = [SHORT[k] for k in np.flatnonzero(labels)]
    return ", ".join(names) if names else "-"


def pick_examples(image_study: np.ndarray, study_targets: np.ndarray, regions_any: np.ndarray,
                  count: int = 16) -> np.ndarray:
    """Image rows to show: all views of studies with regions first, then a quarter normal studies."""
    studies = list(dict.fromkeys(image_study.tolist()))
    abnormal = [s for s in studies if regions_any[image_study == s].any()]
    normal = [s for s in studies if not study_targets[s, :NO_FINDING].any()]
    views = max(1, round(len(image_study) / max(len(studies), 1)))
    n_normal = min(len(normal), max(1, count // (4 * views)))
    chosen = abnormal[:max(count // views - n_normal, 0)] + normal[:n_normal]
    rows = np.concatenate([np.flatnonzero(image_study == s) for s in chosen]) if chosen else np.zeros(0, int)
    return rows[:count]
