"""Image-report pairs for pretraining: a study's views (pixels) and its report's sentences.

A pair is a whole study, not an image: the views of one study share one report, so pairing each
view with it would put a positive among the negatives of the contrastive loss. Sentences come
from dataset.h5's cleaned reports (`split_sentences`), at most `max_sentences` per report (the
reconstruction decoder has that many queries). Training batches are augmented as the diagnosis
classifier's are (random resized crop, small rotation, contrast; no horizontal flip, which would
swap the sides a report names).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.adm.classifier import TrainConfig, augment
from stages.core.errors import StageError
from stages.data.h5dataset import DatasetFile
from stages.text.clean import split_sentences
from stages.training.data import sorted_read


@dataclass
class PairBatch:
    rows: np.ndarray              # (B,) study rows of dataset.h5
    pixels: torch.Tensor          # (B, V, S, S) float in [0, 1]; missing views are zeros
    view_mask: torch.Tensor       # (B, V) bool
    sentences: list[list[str]]    # each study's sentences (at least one)


class PairSource:
    """dataset.h5 opened once; makes batches of study rows."""

    def __init__(self, dataset_h5: Path, max_views: int = 2, max_sentences: int = 16,
                 augmentation: TrainConfig | None = None):
        """`augmentation`: the crop area and rotation of training batches (the diagnosis
        classifier's `augment`); None leaves training images as they are."""
        self.data = DatasetFile(dataset_h5)
        self.max_views = max_views
        self.augmentation = augmentation
        self.sentences = [split_sentences(report)[:max_sentences] for report in self.data.reports]
        self.view_rows = self.data.view_rows(max_views)

    @property
    def image_size(self) -> int:
        return self.data.image_size

    def rows(self, split: str) -> np.ndarray:
        """Study rows of a split with at least one image and one sentence."""
        rows = self.data.split_indices(split)
        return np.asarray([r for r in rows if self.view_rows[r, 0] >= 0 and self.sentences[r]], dtype=np.int64)

    def check(self, splits: tuple[str, ...] = ("train", "val")) -> dict[str, int]:
        """Pairs per split; stop when a split the run needs has too few."""
        counts = {split: len(self.rows(split)) for split in ("train", "val", "test")}
        without = sum(1 for s in self.sentences if not s)
        for split in splits:
            need = 2 if split == "train" else 1
            if counts[split] < need:
                reason = (f"; {without} of its {len(self.sentences)} studies have no report text" if without else "")
                raise StageError(f"{self.data.path} has {counts[split]} {split} studies with images and a report "
                                 f"(needs {need}{reason}): pretraining learns from image-report pairs and selects "
                                 "on the val split. Rebuild it from a dataset with reports (rrg-stage preprocess).")
        return counts

    def batch(self, rows: np.ndarray, *, train: bool = False, generator: torch.Generator | None = None) -> PairBatch:
        """The views and sentences of `rows`; with `train`, each view augmented from `generator`."""
        rows = np.asarray(rows)
        image_rows = self.view_rows[rows]
        view_mask = image_rows >= 0
        size = self.data.image_size
        pixels = np.zeros((len(rows), self.max_views, size, size), dtype=np.uint8)
        pixels[view_mask] = sorted_read(self.data.pixels, image_rows[view_mask])
        x = torch.from_numpy(pixels).float().div_(255)
        mask = torch.from_numpy(view_mask)
        if train and self.augmentation is not None:
            x[mask] = augment(x[mask][:, None], generator, self.augmentation)[:, 0]
        return PairBatch(rows, x, mask, [self.sentences[r] for r in rows])

    def close(self) -> None:
        self.data.close()
