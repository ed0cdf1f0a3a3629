"""Image-report pairs for pretraining: a study's views (pixels) and its report's sentences.

A pair is a whole study, not an image: the views of one study share one report, so pairing each
view with it would put a positive among the negatives of the contrastive loss. Sentences come
from dataset.h5's cleaned reports (`split_sentences`), at most `max_sentences` per report (the
reconstruction decoder has that many queries). Training batches are augmented as the diagnosis
classifier's are (random resized crop, small rotation, contrast; no horizontal flip, which would
swap the sides a report names).

Pretraining needs no labels, so it may learn from more pairs than the labelled dataset holds:
`extra` names a second dataset.h5 whose training studies join the training split (as rows after
the dataset's own). Validation, selection and every downstream score stay on the dataset's own
splits, and a study of the extra set that is among the dataset's validation or test studies
stops the run (it would leak into the scores).
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
    """dataset.h5 (and an extra one's training studies) opened once; makes batches of study rows."""

    def __init__(self, dataset_h5: Path, max_views: int = 2, max_sentences: int = 16,
                 augmentation: TrainConfig | None = None, extra: Path | None = None):
        """`augmentation`: the crop area and rotation of training batches (the diagnosis
        classifier's `augment`); None leaves training images as they are. `extra`: another
        dataset.h5 whose training studies are added to the training split."""
        self.data = DatasetFile(dataset_h5)
        self.extra = DatasetFile(extra) if extra is not None else None
        self.max_views = max_views
        self.augmentation = augmentation
        self.files = [self.data] if self.extra is None else [self.data, self.extra]
        if self.extra is not None and self.extra.image_size != self.data.image_size:
            self.close()
            raise StageError(f"{extra} stores {self.extra.image_size}-px images and {dataset_h5} "
                             f"{self.data.image_size}-px ones; preprocess the extra dataset with --image-size "
                             f"{self.data.image_size}")
        self.sentences = [split_sentences(report)[:max_sentences] for f in self.files for report in f.reports]
        self.view_rows = [f.view_rows(max_views) for f in self.files]
        self.offset = len(self.data)  # rows from here on are the extra dataset's

    @property
    def image_size(self) -> int:
        return self.data.image_size

    def _usable(self, rows: np.ndarray, which: int) -> list[int]:
        """Source rows of file `which` (0: the dataset, 1: the extra one) with an image and a sentence,
        as rows of this source."""
        offset = which * self.offset
        return [r + offset for r in rows if self.view_rows[which][r, 0] >= 0 and self.sentences[r + offset]]

    def rows(self, split: str) -> np.ndarray:
        """Study rows of a split with at least one image and one sentence (for "train", the extra
        dataset's training studies after the dataset's own, less those the dataset also holds)."""
        rows = self._usable(self.data.split_indices(split), 0)
        if split == "train" and self.extra is not None:
            own = set(self.data.ids)
            extra = [r for r in self.extra.split_indices("train") if self.extra.ids[r] not in own]
            rows += self._usable(np.asarray(extra, dtype=np.int64), 1)
        return np.asarray(rows, dtype=np.int64)

    def leaked(self) -> list[str]:
        """Studies of the extra dataset's training split that are validation or test studies here."""
        return [] if self.extra is None else self.extra.held_out_in(self.data)

    def check(self, splits: tuple[str, ...] = ("train", "val")) -> dict[str, int]:
        """Pairs per split; stop when a split the run needs has too few."""
        leaked = self.leaked()
        if leaked:
            raise StageError(f"{len(leaked)} training studies of the extra dataset {self.extra.path} are validation "
                             f"or test studies of {self.data.path} (e.g. {', '.join(leaked[:3])}): pretraining on "
                             "them would leak into the scores. Build the extra dataset with the same split (for "
                             "the demo: the same --split-file, or none on both) or leave those studies out.")
        rows = {split: self.rows(split) for split in ("train", "val", "test")}
        counts = {split: len(r) for split, r in rows.items()}
        if self.extra is not None:
            counts["extra_train"] = int((rows["train"] >= self.offset).sum())
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
        size = self.data.image_size
        pixels = np.zeros((len(rows), self.max_views, size, size), dtype=np.uint8)
        view_mask = np.zeros((len(rows), self.max_views), dtype=bool)
        for which, data in enumerate(self.files):
            mine = (rows >= self.offset) == bool(which)
            image_rows = self.view_rows[which][rows[mine] - which * self.offset]
            present = image_rows >= 0
            view_mask[mine] = present
            if present.any():
                block = pixels[mine]  # a copy (fancy indexing): filled, then written back
                block[present] = sorted_read(data.pixels, image_rows[present])
                pixels[mine] = block
        x = torch.from_numpy(pixels).float().div_(255)
        mask = torch.from_numpy(view_mask)
        if train and self.augmentation is not None:
            x[mask] = augment(x[mask][:, None], generator, self.augmentation)[:, 0]
        return PairBatch(rows, x, mask, [self.sentences[r] for r in rows])

    def close(self) -> None:
        for data in self.files:
            data.close()
