"""What report generation reads per study: its views (cached patch tokens or pixels), target ids, labels.

Two visual modes share one batch layout, `views` (B, V, ...) with `view_mask` (B, V):
- cached: each view's patch tokens from features.h5, (B, V, P, C) float32, read per batch from
  the file (chunked per image), so a MIMIC-size feature file never has to fit in memory;
- pixels: each view's image from dataset.h5, (B, V, S', S') float in [0, 1]: a random crop of
  side `crop` while training and the whole image resized to `crop` otherwise (R2Gen crops 224
  from 256 for training and resizes to 224 for testing). No horizontal flip: a report's "left"
  and "right" would no longer match the image.
Studies with fewer views than V are padded and masked; extra views beyond V are left out.
Targets are dataset.h5's R2Gen ids, or ids a model's own tokenizer made of the same cleaned
reports (the warm-started decoder's sub-words; cut to the batch's longest report).
EKAGen's ADM enhancement is applied to pixels here (from adm.h5's masks, before cropping); in
cached mode the enhanced images' tokens come from their own feature file (features_adm.h5).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from stages.adm.enhance import enhance
from stages.core.errors import StageError
from stages.data.h5dataset import DatasetFile


@dataclass
class Batch:
    rows: np.ndarray            # (B,) study rows of dataset.h5
    views: torch.Tensor         # (B, V, P, C) tokens or (B, V, S, S) pixels
    view_mask: torch.Tensor     # (B, V) bool
    targets: torch.Tensor       # (B, T) int64, R2Gen ids [0, w..., 0, pad 0] (or BOS, pieces..., EOS, pad)
    target_mask: torch.Tensor   # (B, T) bool, BOS..EOS
    labels: torch.Tensor        # (B, 14) float32 binary
    teacher_views: torch.Tensor | None = None  # distillation: the teacher's input (like views)

    def to(self, device: torch.device | str) -> "Batch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return Batch(**moved)


@dataclass
class AdmEnhancement:
    """Enhance every image with its adm.h5 mask: img*M + background*img*(1-M) where M covers > theta."""

    adm_h5: Path
    theta: float = 0.4
    background: float = 0.4


def sorted_read(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """dataset[rows] for rows in any order (HDF5 fancy indexing wants increasing, unique rows)."""
    unique, inverse = np.unique(rows, return_inverse=True)
    return dataset[unique][inverse]


class StudySource:
    """dataset.h5 (and features.h5 in cached mode) opened once; makes batches of study rows.

    `labels` (n, 14) are the labels the model is conditioned on, one row per study: training
    labels from labels.h5 for the training split, predicted ones elsewhere (the caller decides).
    `targets` ((n, T) ids, (n,) lengths) replace dataset.h5's R2Gen ids, e.g. a pretrained
    decoder's sub-word ids of the same reports.
    """

    def __init__(self, dataset_h5: Path, labels: np.ndarray, *, features_h5: Path | None = None,
                 max_views: int = 2, crop: int | None = None, adm: AdmEnhancement | None = None,
                 targets: tuple[np.ndarray, np.ndarray] | None = None):
        self.data = DatasetFile(dataset_h5)
        self.targets = targets
        if targets is not None and len(targets[0]) != len(self.data):
            raise StageError(f"{len(targets[0])} target rows for the {len(self.data)} studies of {dataset_h5}")
        self.labels = np.asarray(labels, dtype=np.float32)
        if len(self.labels) != len(self.data):
            raise StageError(f"{len(self.labels)} label rows for the {len(self.data)} studies of {dataset_h5}; "
                             "rebuild the labels of this dataset")
        self.max_views = max_views
        self.crop = crop or self.data.image_size
        if self.crop > self.data.image_size:
            raise StageError(f"crop {self.crop} is larger than the stored images ({self.data.image_size} px)")
        self.patches: h5py.Dataset | None = None
        self._features: h5py.File | None = None
        if features_h5 is not None:
            self._features = h5py.File(features_h5, "r")
            self.patches = self._features["images/patches"]
            if self.patches.shape[0] != len(self.data.image_study):
                raise StageError(f"{features_h5} has {self.patches.shape[0]} images but {dataset_h5} has "
                                 f"{len(self.data.image_study)}; rebuild it with rrg-stage extract-features --force")
        self.adm, self.masks, self._adm = adm, None, None
        if adm is not None:
            if features_h5 is not None:
                raise ValueError("cached tokens are encoded already; enhance them with extract-features --adm instead")
            self._adm = h5py.File(adm.adm_h5, "r")
            self.masks = self._adm["mask"]
            if self.masks.shape != self.data.pixels.shape:
                raise StageError(f"{adm.adm_h5} has masks of shape {self.masks.shape} but {dataset_h5} has images of "
                                 f"shape {self.data.pixels.shape}; rebuild it with rrg-stage adm-masks --force")
        self.view_rows = self.data.view_rows(max_views)

    @property
    def cached(self) -> bool:
        return self.patches is not None

    @property
    def token_shape(self) -> tuple[int, int]:
        """(patches per view, channels) in cached mode."""
        assert self.patches is not None
        return int(self.patches.shape[1]), int(self.patches.shape[2])

    def rows(self, split: str) -> np.ndarray:
        """Study rows of a split that have at least one image."""
        return self.data.split_indices(split)[(self.view_rows[self.data.split_indices(split), 0] >= 0)]

    def batch(self, rows: np.ndarray, *, train: bool = False, generator: torch.Generator | None = None) -> Batch:
        rows = np.asarray(rows)
        image_rows = self.view_rows[rows]
        view_mask = image_rows >= 0
        present = image_rows[view_mask]
        if self.cached:
            tokens, channels = self.token_shape
            views = np.zeros((len(rows), self.max_views, tokens, channels), dtype=np.float32)
            views[view_mask] = sorted_read(self.patches, present).astype(np.float32)
            visual = torch.from_numpy(views)
        else:
            size = self.data.image_size
            pixels = np.zeros((len(rows), self.max_views, size, size), dtype=np.uint8)
            pixels[view_mask] = sorted_read(self.data.pixels, present)
            if self.adm is not None:
                pixels[view_mask] = enhance(pixels[view_mask], sorted_read(self.masks, present).astype(bool),
                                            self.adm.theta, self.adm.background)
            visual = self._crop(torch.from_numpy(pixels).float().div_(255), train, generator)
        if self.targets is None:
            targets = torch.from_numpy(self.data.token_ids[rows].astype(np.int64))
            lengths = torch.from_numpy(self.data.token_len[rows].astype(np.int64))
        else:
            lengths = torch.from_numpy(self.targets[1][rows].astype(np.int64))
            targets = torch.from_numpy(self.targets[0][rows, :max(int(lengths.max()), 2)].astype(np.int64))
        target_mask = torch.arange(targets.shape[1])[None] < lengths[:, None]
        return Batch(rows, visual, torch.from_numpy(view_mask), targets, target_mask,
                     torch.from_numpy(self.labels[rows]))

    def _crop(self, pixels: torch.Tensor, train: bool, generator: torch.Generator | None) -> torch.Tensor:
        size, crop = pixels.shape[-1], self.crop
        if crop == size:
            return pixels
        if not train:
            b, v = pixels.shape[:2]
            resized = F.interpolate(pixels.flatten(0, 1)[:, None], size=(crop, crop), mode="bilinear",
                                    align_corners=False, antialias=True)
            return resized[:, 0].unflatten(0, (b, v))
        offsets = torch.randint(0, size - crop + 1, (pixels.shape[0], 2), generator=generator).tolist()
        return torch.stack([study[:, r:r + crop, c:c + crop] for study, (r, c) in zip(pixels, offsets)])

    def close(self) -> None:
        self.data.close()
        for handle in (self._features, self._adm):
            if handle is not None:
                handle.close()


def _pad(x: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[1])) if x.shape[1] < width else x


class MixedSource:
    """A real dataset's StudySource with the training studies of an extra (e.g. synthetic) dataset added.

    Rows below `offset` (the real dataset's study count) are real studies; row `offset + r` is study
    r of the extra dataset. Only the extra dataset's training split joins, so validation and test
    (and everything that reads `data`: ids, reference reports) stay the real dataset's.
    """

    def __init__(self, real: StudySource, extra: StudySource):
        if (real.cached, real.max_views) != (extra.cached, extra.max_views) or (
                real.cached and real.token_shape != extra.token_shape) or (
                not real.cached and (real.crop, real.data.image_size) != (extra.crop, extra.data.image_size)):
            raise StageError(f"the extra dataset {extra.data.path} does not give the model the same inputs as "
                             f"{real.data.path} (visual mode, views, token shape or image size); rebuild its features "
                             "with the real dataset's extract-features options")
        if real.data.token_ids.shape[1] != extra.data.token_ids.shape[1]:
            raise StageError(f"{extra.data.path} stores reports of {extra.data.token_ids.shape[1]} token ids, "
                             f"{real.data.path} of {real.data.token_ids.shape[1]}; make both with the same --max-length")
        self.real, self.extra = real, extra
        self.data = real.data
        self.offset = len(real.data)

    @property
    def cached(self) -> bool:
        return self.real.cached

    @property
    def token_shape(self) -> tuple[int, int]:
        return self.real.token_shape

    def rows(self, split: str) -> np.ndarray:
        rows = self.real.rows(split)
        return np.concatenate([rows, self.offset + self.extra.rows("train")]) if split == "train" else rows

    def batch(self, rows: np.ndarray, *, train: bool = False, generator: torch.Generator | None = None) -> Batch:
        rows = np.asarray(rows)
        own = rows < self.offset
        if own.all():
            return self.real.batch(rows, train=train, generator=generator)
        parts = [s.batch(r, train=train, generator=generator) for s, r in
                 ((self.real, rows[own]), (self.extra, rows[~own] - self.offset)) if len(r)]
        width = max(p.targets.shape[1] for p in parts)
        order = np.argsort(np.concatenate([np.flatnonzero(own), np.flatnonzero(~own)]), kind="stable")
        index = torch.from_numpy(order)
        return Batch(rows, torch.cat([p.views for p in parts])[index], torch.cat([p.view_mask for p in parts])[index],
                     torch.cat([_pad(p.targets, width) for p in parts])[index],
                     torch.cat([_pad(p.target_mask, width) for p in parts])[index],
                     torch.cat([p.labels for p in parts])[index])

    def close(self) -> None:
        self.real.close()
        self.extra.close()
