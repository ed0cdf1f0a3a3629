"""`synthesize evaluate`'s measurements on one set of prompts (see quality.py for the method)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from stages.adm.classifier import Diagnosis, class_aurocs, macro, pool_studies
from stages.evaluation.bootstrap import interval
from stages.features.extract import encode_images
from stages.labeling.observations import NO_FINDING, OBSERVATIONS
from stages.models.image_encoders import ImageEncoder
from stages.synthesis.prompts import PromptBank, PromptPlan, to_resolution, to_uint8
from stages.synthesis.quality import (finding_contrast, frechet_distance, halves, mean_images, noise_images,
                                      principal_axes, save_contrasts, save_grid)
from stages.synthesis.vision import VisionModel, sample

# findings the demo's phantoms draw visibly; the target is AUROC >= 0.75 on each
VISIBLE = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Support Devices")
# a visible finding's AUROC is a target (and gets an interval) only with this many positive prompt
# studies: the demo's test split holds one pneumothorax report, whose AUROC is the rank of one study
MIN_POSITIVES = 3


def pooled_features(encoder: ImageEncoder, images: np.ndarray, input_size: int, batch_size: int = 64) -> np.ndarray:
    return np.concatenate([encode_images(encoder, images[s:s + batch_size], input_size)[0].cpu().numpy()
                           for s in range(0, len(images), batch_size)])


def round_trip(images: np.ndarray, resolution: int) -> np.ndarray:
    """Real images brought down to the model's resolution and back, as generated ones are stored."""
    return to_uint8(to_resolution(images, resolution), images.shape[-1])


def study_aurocs(diagnosis: Diagnosis, images: np.ndarray, plan: PromptPlan, targets: np.ndarray) -> dict[str, Any]:
    """Per-class AUROC of the classifier's study probabilities (maximum over views) against `targets`,
    with 95% bootstrap intervals over the prompt studies for the visible findings (a handful of
    positives each, so the intervals are wide)."""
    probs = pool_studies(diagnosis.probabilities(images), plan.image_study)[1]
    aurocs = class_aurocs(targets, probs)

    def resampled(k: int) -> list[float] | None:
        return interval(lambda i: class_aurocs(targets[i][:, [k]], probs[i][:, [k]])[0], len(targets))

    counts = targets.sum(0)
    spans = {c: resampled(k) if aurocs[k] is not None and counts[k] >= MIN_POSITIVES else None
             for c, k in ((c, OBSERVATIONS.index(c)) for c in VISIBLE)}
    return {"per_class": dict(zip(OBSERVATIONS, aurocs)), "macro": macro(aurocs),
            "visible_macro": macro([aurocs[OBSERVATIONS.index(c)] for c in VISIBLE]), "intervals": spans}


def contrasts(plan: PromptPlan, view_names: list[str], targets: np.ndarray, real: np.ndarray, generated: np.ndarray,
              path: Path, title: str) -> dict[str, dict[str, float | None]]:
    """Contrast maps of the visible findings with enough positive prompts, real against generated in
    each view (a PNG), and the correlation of each pair of maps."""
    per_image = targets[plan.image_study]
    rows: dict[str, list[tuple[str, np.ndarray]]] = {}
    correlation: dict[str, dict[str, float | None]] = {}
    for name in VISIBLE:
        k = OBSERVATIONS.index(name)
        if targets[:, k].sum() < MIN_POSITIVES:
            continue
        for v, view in enumerate(view_names):
            shown = plan.views == v
            pair = [finding_contrast(images[shown], per_image[shown, k]) for images in (real, generated)]
            if pair[0] is None or pair[1] is None:
                continue
            rows.setdefault(name, []).extend([(f"real, {view}", pair[0]), (f"generated, {view}", pair[1])])
            flat = min(pair[0].std(), pair[1].std()) == 0  # a map without contrast correlates with nothing
            correlation.setdefault(name, {})[view] = None if flat else float(
                np.corrcoef(pair[0].ravel(), pair[1].ravel())[0, 1])
    if rows:
        save_contrasts(path, rows, title)
    return correlation


def grid_rows(plan: PromptPlan, labels: np.ndarray, rows: int) -> list[int]:
    """Synthetic studies to show: the first prompt of each visible finding, then normal ones, then the rest."""
    chosen: list[int] = []
    for name in VISIBLE:
        hits = [i for i in range(len(plan.studies)) if labels[plan.studies[i], OBSERVATIONS.index(name)]]
        chosen += [i for i in hits if i not in chosen][:1]
    normal = [i for i in range(len(plan.studies)) if labels[plan.studies[i], NO_FINDING] and i not in chosen]
    chosen += normal[:2]
    chosen += [i for i in range(len(plan.studies)) if i not in chosen]
    return chosen[:rows]


def evaluate_vision(model: VisionModel, bank: PromptBank, plan: PromptPlan, diagnosis: Diagnosis,
                    encoder: ImageEncoder, *, input_size: int, guidance: float, steps: int, seed: int,
                    batch_size: int, components: int, grid: Path, grid_size: int, contrast_maps: Path
                    ) -> tuple[dict[str, Any], np.ndarray]:
    """Generate an image for every image of the plan and measure it; returns (results, generated images)."""
    size, resolution = bank.data.image_size, model.config.resolution
    started = time.time()
    generated = to_uint8(sample(model, plan.prompts(bank), guidance=guidance, steps=steps, seed=seed,
                                batch_size=batch_size), size)
    seconds_per_image = (time.time() - started) / len(generated)
    real = bank.pixels(plan.real_rows)
    real_low = round_trip(real, resolution)
    rng = np.random.default_rng([seed, 11])
    train_rows = bank.image_rows("train")
    view_means = np.stack([bank.pixels(train_rows[bank.view[train_rows] == v]).mean(0)
                           for v in range(len(bank.view_names))])
    first, second = halves(np.arange(len(plan.studies)), seed)
    in_first, in_second = np.isin(plan.image_study, first), np.isin(plan.image_study, second)
    n = int(in_first.sum())
    candidates = {"real (floor)": real_low[in_first], "generated": generated[in_first],
                  "noise baseline": noise_images(n, size, rng),
                  "mean-image baseline": mean_images(view_means, plan.views[in_first], rng)}
    reference = pooled_features(encoder, real_low[in_second], input_size)
    mean, axes = principal_axes(bank.image[train_rows], components)
    frechet = {}
    for name, images in candidates.items():
        features = pooled_features(encoder, images, input_size)
        frechet[name] = {"full": frechet_distance(features, reference),
                         f"pca{components}": frechet_distance((features - mean) @ axes, (reference - mean) @ axes)}
    targets = bank.labels[plan.studies]
    clinical = {"generated": study_aurocs(diagnosis, generated, plan, targets),
                f"real at {resolution} px": study_aurocs(diagnosis, real_low, plan, targets),
                f"real at {size} px": study_aurocs(diagnosis, real, plan, targets)}
    positives = dict(zip(OBSERVATIONS, targets.sum(0).astype(int).tolist()))
    shown = grid_rows(plan, bank.labels, grid_size)
    captions = [", ".join(OBSERVATIONS[k] for k in np.flatnonzero(bank.labels[plan.studies[i]])) for i in shown]
    save_grid(grid, [real[plan.image_study == i] for i in shown], [generated[plan.image_study == i] for i in shown],
              [c.replace("Pleural ", "").replace("Support Devices", "Devices") for c in captions],
              f"{model.config.prompt} prompt, guidance {guidance}, {steps} DDIM steps: real (left) and generated")
    correlation = contrasts(plan, bank.view_names, targets, real_low, generated, contrast_maps,
                            "mean image with the finding minus without it (grey levels): real (at "
                            f"{resolution} px and back) and generated for the same prompts")
    results = {"studies": len(plan.studies), "images": len(generated), "images_per_half": n,
               "frechet": frechet, "clinical_auroc": clinical, "positives": positives,
               "contrast_correlation": correlation,
               "sampling_seconds_per_image": seconds_per_image, "targets": {
                   "frechet_below_baselines": frechet["generated"]["full"] < min(
                       frechet["noise baseline"]["full"], frechet["mean-image baseline"]["full"]),
                   **{f"auroc_{c}": clinical["generated"]["per_class"][c] if positives[c] >= MIN_POSITIVES else None
                      for c in VISIBLE}}}
    return results, generated

