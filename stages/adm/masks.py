"""`adm.h5`: the diagnosis of every image and its aggregate discriminative attention mask.

Layout (one row per image, rows follow dataset.h5's /images)
  /mask (m, S, S) uint8 0/1, gzip, one image per chunk
  /area (m,) float32          fraction of the image the mask covers (enhancement applies above theta)
  /probs (m, 14) float32      classifier probabilities
  /predicted (m, 14) uint8    classes whose CAM entered the mask (findings with probs >= threshold)
  /cam_max (m, 14, 2) int16   (row, col) of every class's Grad-CAM maximum, -1 for an empty map
  /study (m,) int64           study row of each image
  attrs: observations, image_size, cam_threshold, dilation, theta, backbone, thresholds
Rows are written in batches and a cut-short run resumes from its last batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from stages.adm.classifier import FINDINGS, Diagnosis
from stages.adm.gradcam import aggregate_mask, grad_cam, peaks, scale_maps
from stages.core.errors import StageError
from stages.core.resumable import commit, mark_done, open_partial


@dataclass
class AdmBatch:
    probs: np.ndarray      # (B, K) float32
    predicted: np.ndarray  # (B, K) bool
    mask: np.ndarray       # (B, S, S) bool
    area: np.ndarray       # (B,) float32
    cam_max: np.ndarray    # (B, K, 2) int64


def adm_batch(diagnosis: Diagnosis, images: np.ndarray, cam_threshold: float = 0.6, dilation: int = 5) -> AdmBatch:
    """Probabilities, Grad-CAM peaks and the aggregate mask of a (B, S, S) uint8 batch.

    The mask unites the CAMs of the findings predicted positive (probability >= the class's
    image threshold); No Finding never enters it, as it marks the absence of a region.
    """
    net = diagnosis.net.eval()
    size = images.shape[-1]
    with torch.no_grad():
        grid = net.features(net.encoder.prepare(images))
        probs = torch.sigmoid(net.classify(grid))
    cams = grad_cam(net.classify, grid)
    thresholds = torch.as_tensor(diagnosis.thresholds, dtype=probs.dtype, device=probs.device)
    selected = (probs >= thresholds) & torch.as_tensor(FINDINGS, device=probs.device)
    mask = aggregate_mask(scale_maps(cams, size), selected, cam_threshold, dilation)
    return AdmBatch(probs.float().cpu().numpy(), selected.cpu().numpy(), mask.cpu().numpy(),
                    mask.float().mean(dim=(-2, -1)).cpu().numpy(), peaks(cams, size).cpu().numpy())


def _create(handle: h5py.File, images: int, size: int, classes: int) -> None:
    handle.create_dataset("mask", (images, size, size), np.uint8, chunks=(1, size, size), compression="gzip",
                          compression_opts=4, shuffle=True)
    handle.create_dataset("area", (images,), np.float32)
    handle.create_dataset("probs", (images, classes), np.float32)
    handle.create_dataset("predicted", (images, classes), np.uint8)
    handle.create_dataset("cam_max", (images, classes, 2), np.int16)


def write_adm(final: Path, pixels: h5py.Dataset, image_study: np.ndarray, diagnosis: Diagnosis, *,
              cam_threshold: float, dilation: int, theta: float, batch_size: int, key: str) -> dict[str, float]:
    """Fill `final` with every image's diagnosis and mask; return summary counts."""
    images, size = int(pixels.shape[0]), int(pixels.shape[-1])
    classes = len(diagnosis.observations)
    handle = open_partial(final, key, lambda h: _create(h, images, size, classes))
    try:
        done = int(handle.attrs["n_done"])
        for start in tqdm(range(done, images, batch_size), desc="adm masks", unit="batch"):
            stop = min(start + batch_size, images)
            batch = adm_batch(diagnosis, pixels[start:stop], cam_threshold, dilation)
            handle["mask"][start:stop] = batch.mask.astype(np.uint8)
            handle["area"][start:stop] = batch.area
            handle["probs"][start:stop] = batch.probs
            handle["predicted"][start:stop] = batch.predicted.astype(np.uint8)
            handle["cam_max"][start:stop] = batch.cam_max.astype(np.int16)
            mark_done(handle, stop)
        handle.create_dataset("study", data=np.asarray(image_study, dtype=np.int64))
        handle.attrs.update(observations=json.dumps(list(diagnosis.observations)), image_size=size,
                            cam_threshold=cam_threshold, dilation=dilation, theta=theta, backbone=diagnosis.backbone,
                            thresholds=np.asarray(diagnosis.thresholds, dtype=np.float64))
        area = handle["area"][:]
        predicted = handle["predicted"][:]
    except BaseException:
        handle.close()
        raise
    commit(handle, final)
    return {"images": images, "mean_area": round(float(area.mean()), 4) if images else 0.0,
            "enhanced_images": int((area > theta).sum()), "empty_masks": int((area == 0).sum()),
            "predicted_findings": int(predicted.sum())}


def read_masks(path: Path, rows: np.ndarray | slice) -> np.ndarray:
    """(n, S, S) bool masks of the given image rows of an adm.h5 (rows in any order)."""
    try:
        with h5py.File(path, "r") as h5:
            if isinstance(rows, slice):
                return h5["mask"][rows].astype(bool)
            unique, inverse = np.unique(np.asarray(rows), return_inverse=True)
            return h5["mask"][unique].astype(bool)[inverse]
    except (OSError, KeyError) as error:
        raise StageError(f"{path} is not a readable adm.h5 ({error}); rebuild it with rrg-stage adm-masks --force") from None


def enhancement_settings(path: Path, background: float) -> dict[str, float]:
    """The ADM enhancement a model's inputs get: theta recorded in adm.h5, the `background`
    factor, and the mask settings that reproduce the masks for new images."""
    if not 0 <= background <= 1:
        raise StageError(f"the ADM background factor must lie in [0, 1], got {background}")
    try:
        with h5py.File(path, "r") as h5:
            attrs = {k: float(h5.attrs[k]) for k in ("theta", "cam_threshold", "dilation")}
    except (OSError, KeyError) as error:
        raise StageError(f"{path} is not a readable adm.h5 ({error}); rebuild it with rrg-stage adm-masks --force") from None
    return {**attrs, "dilation": int(attrs["dilation"]), "background": float(background)}
