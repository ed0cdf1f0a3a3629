"""EKAGen's diagnosis bot: a 14-label image classifier, its training, thresholds and checkpoint.

Training is per image: each view of a study is a sample carrying the study's labels (findings
are visible on every view, and the masks are made per image). Study-level scores take the
maximum probability over the study's views. The checkpoint is the epoch with the best
validation macro-AUROC; per-class thresholds maximise validation F1, once on image
probabilities (which classes enter an image's mask) and once on study-pooled ones (the labels
that report generators use at test time instead of labels read from reference reports).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm import tqdm

from stages.adm.backbone import GRIDS, set_grid
from stages.core.artifacts import load_torch
from stages.core.checkpoints import save_checkpoint
from stages.labeling.observations import NO_FINDING, OBSERVATIONS
from stages.models.image_encoders import ENCODERS, ImageEncoder, build_image_encoder

FORMAT = "rrg-diagnosis/1"
FINDINGS = np.arange(len(OBSERVATIONS)) != NO_FINDING  # classes whose CAM can enter a mask


class DiagnosisNet(nn.Module):
    """Image encoder + dropout + a linear class score at every grid cell, pooled by log-sum-exp.

    Pooling the class scores with LSE_r = log(mean(exp(r * s))) / r lies between the average
    (r -> 0, the usual global-average-pooling head) and the maximum (r -> inf). A sharper pool
    makes the decision rest on the cells that show the finding, so the class maps that Grad-CAM
    recovers from it localise small findings instead of spreading over the chest. `sharpness` 0
    is plain average pooling.
    """

    def __init__(self, encoder: ImageEncoder, classes: int = len(OBSERVATIONS), dropout: float = 0.2,
                 sharpness: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.channels, classes)
        self.sharpness = sharpness

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, C, h, w) last feature grid (Grad-CAM's layer)."""
        return self.encoder(x)

    def classify(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) grid -> (B, K) logits."""
        if self.sharpness <= 0:
            return self.head(self.dropout(grid.mean(dim=(-2, -1))))
        scores = self.head(self.dropout(grid.flatten(2).transpose(1, 2)))  # (B, h*w, K)
        r = self.sharpness
        return (torch.logsumexp(r * scores, dim=1) - math.log(scores.shape[1])) / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


@dataclass
class TrainConfig:
    """Training options; all of them are recorded in the checkpoint."""

    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.2
    max_pos_weight: float = 10.0
    warmup_fraction: float = 0.1
    max_rotation: float = 7.0
    min_crop_area: float = 0.75
    grid: str = "fine"
    sharpness: float = 5.0
    encoder_lr_scale: float = 1.0
    min_val_positives: int = 3
    seed: int = 0


@dataclass
class Diagnosis:
    """A trained classifier and everything needed to use it on new images of its size."""

    net: DiagnosisNet
    backbone: str
    image_size: int
    grid: str
    thresholds: np.ndarray
    study_thresholds: np.ndarray
    observations: tuple[str, ...] = OBSERVATIONS
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def probabilities(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(B, K) float32 probabilities for (B, S, S) uint8 images."""
        self.net.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = self.net.encoder.prepare(np.asarray(images[start:start + batch_size]))
                out.append(torch.sigmoid(self.net(x)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.observations)), np.float32)


def pool_studies(probs: np.ndarray, study: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct studies in sorted order, (n, K) maximum probability over each study's images)."""
    studies, inverse = np.unique(np.asarray(study), return_inverse=True)
    pooled = np.zeros((len(studies), probs.shape[1]), dtype=probs.dtype)
    np.maximum.at(pooled, inverse, probs)
    return studies, pooled


def predict_labels(images: np.ndarray, diagnosis: Diagnosis, study: np.ndarray | None = None,
                   batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(binary labels (n, 14) uint8, probabilities (n, 14)) predicted from images.

    Per image, or with `study` (B,) one row per distinct study id (sorted) using the
    study-level thresholds on probabilities max-pooled over its views. No Finding follows the
    labels.h5 convention: 1 exactly when no finding is predicted.
    """
    return labels_from_probs(diagnosis.probabilities(images, batch_size), diagnosis, study)


def labels_from_probs(probs: np.ndarray, diagnosis: Diagnosis,
                      study: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`predict_labels` for image probabilities already computed (adm.h5 stores them for every image)."""
    thresholds = diagnosis.thresholds
    if study is not None:
        if len(study) != len(probs):
            raise ValueError(f"{len(study)} study ids for {len(probs)} images")
        probs, thresholds = pool_studies(probs, study)[1], diagnosis.study_thresholds
    labels = (probs >= thresholds).astype(np.uint8)
    labels[:, NO_FINDING] = ~labels[:, FINDINGS].any(axis=1)
    return labels, probs


def f1_thresholds(targets: np.ndarray, probs: np.ndarray, fallback: float = 0.5,
                  min_positives: int = 1) -> np.ndarray:
    """Per-class threshold maximising F1 of `probs >= t`; `fallback` below `min_positives` positives.

    The threshold sits halfway between the lowest probability predicted positive at the optimum
    and the next lower one, not on a sample's own probability, so that it generalises a little.
    With one or two positives the optimum is an accident of those samples (one badly ranked
    positive drags the threshold to ~0 and marks every image positive), hence `min_positives`.
    """
    out = np.full(targets.shape[1], fallback, dtype=np.float64)
    for k in range(targets.shape[1]):
        y, p = targets[:, k].astype(bool), probs[:, k].astype(np.float64)
        if y.sum() < max(min_positives, 1):
            continue
        order = np.argsort(-p, kind="stable")
        ps, tp = p[order], np.cumsum(y[order])
        last = np.r_[ps[:-1] > ps[1:], True]  # cuts between distinct probabilities only
        f1 = np.where(last, 2 * tp / (np.arange(1, len(p) + 1) + y.sum()), -1)
        i = int(np.argmax(f1))
        out[k] = (ps[i] + ps[i + 1]) / 2 if i + 1 < len(ps) else ps[i]
    return out


def auroc(y: np.ndarray, score: np.ndarray) -> float | None:
    """AUROC of one class; None where it lacks positives or negatives (undefined, not 0.5)."""
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else None


def class_aurocs(targets: np.ndarray, probs: np.ndarray) -> list[float | None]:
    """AUROC per class (column)."""
    return [auroc(targets[:, k], probs[:, k]) for k in range(targets.shape[1])]


def macro(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def augment(x: torch.Tensor, generator: torch.Generator, config: TrainConfig) -> torch.Tensor:
    """Random resized crop + small rotation + mild contrast/brightness on (B, 1, S, S) in [0, 1].

    No horizontal flip: left and right are not interchangeable on a chest radiograph (the heart
    lies left, reports name the side of a finding, and the demo draws findings on the side its
    report names), so a flipped image would teach anatomy that does not exist.
    """
    b = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, generator=generator)

    scale = uniform(config.min_crop_area, 1.0).sqrt()
    angle = uniform(-config.max_rotation, config.max_rotation) * math.pi / 180
    shift_y, shift_x = (uniform(-1, 1) * (1 - scale) for _ in range(2))
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    contrast, brightness = uniform(0.9, 1.1).to(x), uniform(-0.05, 0.05).to(x)
    return (out * contrast[:, None, None, None] + brightness[:, None, None, None]).clamp_(0, 1)


def normalise(encoder: ImageEncoder, x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> the encoder's normalised (B, 3, H, W) (as `ImageEncoder.prepare`)."""
    return (x.expand(-1, 3, -1, -1) - encoder.mean) / encoder.std


def read_rows(pixels: h5py.Dataset | np.ndarray, rows: np.ndarray) -> np.ndarray:
    """pixels[rows] for rows in any order, repeats allowed (HDF5 wants increasing indices)."""
    unique, inverse = np.unique(np.asarray(rows), return_inverse=True)
    return pixels[unique][inverse]


def pos_weights(targets: np.ndarray, cap: float) -> np.ndarray:
    """negatives/positives per class, clipped to [1, cap]; 1 for classes without positives."""
    positives = targets.sum(axis=0).astype(np.float64)
    ratio = np.where(positives > 0, (len(targets) - positives) / np.maximum(positives, 1), 1.0)
    return np.clip(ratio, 1.0, cap)


def _warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    return factor


@dataclass
class TrainData:
    """What training reads: image pixels and, per image, its study and the study's labels."""

    pixels: h5py.Dataset | np.ndarray
    image_study: np.ndarray
    targets: np.ndarray  # (m, K) per image
    train: np.ndarray    # image rows
    val: np.ndarray      # image rows


def evaluate(net: DiagnosisNet, data: TrainData, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """(len(rows), K) probabilities of the given images, no augmentation."""
    net.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            images = read_rows(data.pixels, rows[start:start + batch_size])
            out.append(torch.sigmoid(net(net.encoder.prepare(images))).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, data.targets.shape[1]), np.float32)


def validation_scores(data: TrainData, probs: np.ndarray) -> dict[str, Any]:
    """Study-level (max over views) and image-level AUROC per class on validation."""
    studies, pooled = pool_studies(probs, data.image_study[data.val])
    study_targets = pool_studies(data.targets[data.val], data.image_study[data.val])[1]
    study_auc, image_auc = class_aurocs(study_targets, pooled), class_aurocs(data.targets[data.val], probs)
    return {"study_auroc": study_auc, "image_auroc": image_auc, "macro_auroc": macro(study_auc)}


def train_diagnosis(data: TrainData, encoder: ImageEncoder, config: TrainConfig, *, state_path: Path | None = None,
                    resume_key: str = "", device: str = "cpu", log: Callable[[str], None] = tqdm.write) -> Diagnosis:
    """Train on `data.train`, select the epoch and thresholds on `data.val`, return the classifier.

    Deterministic under `config.seed`: each epoch draws its order, augmentation and dropout from
    generators seeded by (seed, epoch). With `state_path`, the state after every epoch is saved
    there and a later call with the same `resume_key` continues from it.
    """
    torch.manual_seed(config.seed)
    net = DiagnosisNet(set_grid(encoder, config.grid), data.targets.shape[1],
                       config.dropout, config.sharpness).to(device)
    weight = torch.as_tensor(pos_weights(data.targets[data.train], config.max_pos_weight), dtype=torch.float32)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=weight.to(device))
    optimizer = torch.optim.AdamW([{"params": net.encoder.parameters(), "lr": config.lr * config.encoder_lr_scale},
                                   {"params": net.head.parameters(), "lr": config.lr}], weight_decay=config.weight_decay)
    steps = math.ceil(len(data.train) / config.batch_size)
    total = steps * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(total, max(1, round(config.warmup_fraction * total))))
    state: dict[str, Any] = {"epoch": 0, "best": None, "best_score": -math.inf, "best_epoch": 0, "history": []}
    if state_path is not None and state_path.exists():
        saved = torch.load(state_path, map_location=device, weights_only=True)
        if saved.get("key") == resume_key:
            net.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            state = saved["state"]
            log(f"resuming diagnosis training after epoch {state['epoch']} of {config.epochs}")
    targets = torch.as_tensor(data.targets, dtype=torch.float32)
    for epoch in range(state["epoch"], config.epochs):
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        torch.manual_seed(config.seed * 100_003 + epoch)
        order = data.train[torch.randperm(len(data.train), generator=generator).numpy()]
        net.train()
        bar = tqdm(range(0, len(order), config.batch_size), desc=f"diagnosis epoch {epoch + 1}/{config.epochs}",
                   unit="batch", leave=False)
        running = []
        for start in bar:
            rows = order[start:start + config.batch_size]
            x = torch.as_tensor(read_rows(data.pixels, rows)).to(torch.float32).div_(255)[:, None]
            x = normalise(net.encoder, augment(x, generator, config).to(device))
            loss = loss_fn(net(x), targets[rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(running[-20:]):.3f}")
        bar.close()
        probs = evaluate(net, data, data.val, config.batch_size)
        scores = validation_scores(data, probs)
        score = scores["macro_auroc"]
        state["history"].append({"epoch": epoch + 1, "train_loss": float(np.mean(running)), "val_macro_auroc": score})
        log(f"diagnosis epoch {epoch + 1}/{config.epochs}: train loss {np.mean(running):.4f}, "
            f"val macro-AUROC {'n/a' if score is None else f'{score:.3f}'}")
        better = score is not None and score > state["best_score"]
        if better or (state["best"] is None and epoch + 1 == config.epochs):
            state.update(best=copy.deepcopy(net.state_dict()), best_score=score if better else state["best_score"],
                         best_epoch=epoch + 1)
        state["epoch"] = epoch + 1
        if state_path is not None:
            save_checkpoint(state_path, {"key": resume_key, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                                         "scheduler": scheduler.state_dict(), "state": state})
    net.load_state_dict(state["best"])
    probs = evaluate(net, data, data.val, config.batch_size)
    scores = validation_scores(data, probs)
    val_study = data.image_study[data.val]
    study_targets = pool_studies(data.targets[data.val], val_study)[1]
    info = {
        "best_epoch": state["best_epoch"], "history": state["history"], "training": vars(config),
        "val_images": int(len(data.val)), "val_studies": int(len(np.unique(val_study))),
        "val_study_auroc": dict(zip(OBSERVATIONS, scores["study_auroc"])),
        "val_image_auroc": dict(zip(OBSERVATIONS, scores["image_auroc"])),
        "val_macro_auroc": scores["macro_auroc"],
        "val_positives_study": dict(zip(OBSERVATIONS, study_targets.sum(0).astype(int).tolist())),
        "threshold_rule": f"best validation F1; 0.5 below {config.min_val_positives} positive validation studies",
    }
    study_thresholds = f1_thresholds(study_targets, pool_studies(probs, val_study)[1],
                                     min_positives=config.min_val_positives)
    image_thresholds = f1_thresholds(data.targets[data.val], probs)
    # every view repeats its study's labels, so count positive studies, not images, for the rule
    scarce = study_targets.sum(axis=0) < config.min_val_positives
    image_thresholds[scarce] = 0.5
    return Diagnosis(net.eval(), encoder.name, int(data.pixels.shape[-1]), config.grid,
                     image_thresholds, study_thresholds, OBSERVATIONS, info)


def save_diagnosis(diagnosis: Diagnosis, path: Path) -> None:
    """Write the checkpoint (plain tensors and Python values, loadable with weights_only=True)."""
    encoder = diagnosis.net.encoder
    torch.save({
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in diagnosis.net.state_dict().items()},
        "backbone": diagnosis.backbone,
        "observations": list(diagnosis.observations),
        "image_size": diagnosis.image_size,
        "grid": diagnosis.grid,
        "thresholds": [float(t) for t in diagnosis.thresholds],
        "study_thresholds": [float(t) for t in diagnosis.study_thresholds],
        "dropout": float(diagnosis.net.dropout.p),
        "sharpness": float(diagnosis.net.sharpness),
        "preprocessing": {"input": "uint8 grayscale (S, S) / 255, repeated to 3 channels",
                          "mean": encoder.mean.flatten().tolist(), "std": encoder.std.flatten().tolist()},
        "info": json.loads(json.dumps(diagnosis.info, default=float)),
    }, path)


def load_diagnosis(path: Path, expected_image_size: int | None = None, device: str = "cpu",
                   observations: Sequence[str] = OBSERVATIONS) -> Diagnosis:
    """Load a diagnosis.pt; refuse one made for another label order or image size (ValueError)."""
    path = Path(path)
    saved = load_torch(path, "diagnosis checkpoint")
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ValueError(f"{path} is not a diagnosis checkpoint written by adm-masks (format {FORMAT})")
    if list(saved["observations"]) != list(observations):
        raise ValueError(f"{path} predicts labels in another order ({saved['observations']}) than this project's "
                         f"{list(observations)}; retrain it with rrg-stage adm-masks")
    if expected_image_size is not None and saved["image_size"] != expected_image_size:
        raise ValueError(f"{path} was trained on {saved['image_size']}-px images, but these images are "
                         f"{expected_image_size} px; retrain it on this dataset with rrg-stage adm-masks")
    if saved["backbone"] not in ENCODERS:
        raise ValueError(f"{path} names an unknown backbone {saved['backbone']!r}")
    # checkpoints written before the grid option recorded an output stride (16: dilated, 32: full)
    grid = saved.get("grid") or {16: "dilated", 32: "full"}.get(saved.get("output_stride"), "")
    if grid not in GRIDS:
        raise ValueError(f"{path} names an unknown classifier grid {grid!r}; retrain it with rrg-stage adm-masks")
    encoder = set_grid(build_image_encoder(saved["backbone"], "random"), grid)
    net = DiagnosisNet(encoder, len(observations), saved["dropout"], saved["sharpness"])
    try:
        net.load_state_dict(saved["state_dict"])
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit a {saved['backbone']} classifier: {error}") from None
    return Diagnosis(net.to(device).eval(), saved["backbone"], int(saved["image_size"]), grid,
                     np.asarray(saved["thresholds"], dtype=np.float64),
                     np.asarray(saved["study_thresholds"], dtype=np.float64), tuple(saved["observations"]),
                     saved.get("info", {}))
