"""The vision module's prompt: a report's text embedding, a reference image's embedding, a view.

CXR-IRGen conditions its diffusion model on the report's text embedding combined with the image
embedding of a reference radiograph. Here the text embedding is features.h5's MiniLM embedding of
the cleaned report and the image embedding is features.h5's pooled EfficientNet-Lite0 feature of
the reference image. The reference is another training image of the same view whose study has the
same 14 labels (else the nearest label vector by Hamming distance), drawn at random - never the
target image itself, which would let the model copy its embedding instead of reading the report,
and would not exist at generation time, where a report comes without an image. The view
(frontal / lateral) is always given: it is the study's layout, not part of the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.nn import functional as F

from stages.core.errors import StageError
from stages.data.h5dataset import DatasetFile
from stages.training.data import sorted_read

PROMPTS = ("text+image", "text", "image")


@dataclass
class Prompts:
    text: torch.Tensor    # (B, text_dim) report embeddings
    image: torch.Tensor   # (B, image_dim) reference image embeddings (pooled encoder features)
    view: torch.Tensor    # (B,) view index

    def to(self, device: torch.device | str) -> "Prompts":
        return Prompts(self.text.to(device), self.image.to(device), self.view.to(device))


def to_resolution(pixels: np.ndarray, resolution: int) -> torch.Tensor:
    """(n, S, S) uint8 -> (n, 1, R, R) float in [-1, 1] (area averaging when shrinking)."""
    x = torch.from_numpy(np.asarray(pixels)).float().div_(127.5).sub_(1)[:, None]
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="area" if x.shape[-1] > resolution else "bilinear")
    return x


def to_uint8(x: torch.Tensor, size: int) -> np.ndarray:
    """(n, 1, R, R) in [-1, 1] -> (n, size, size) uint8 (bilinear when enlarging)."""
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return ((x[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


class PromptBank:
    """dataset.h5, labels.h5 and features.h5 of one dataset, read once: every study's text
    embedding and labels, every image's embedding and view, and the reference pool (training
    images). `add_training` appends another dataset's training studies after the dataset's own
    (train-vision --extra-data); `data` stays the dataset's own file."""

    def __init__(self, dataset_h5: Path, labels_h5: Path, features_h5: Path):
        self.data = DatasetFile(dataset_h5)
        try:
            with h5py.File(features_h5, "r") as h5:
                text, pooled = h5["studies/text"][:], h5["images/pooled"][:]
            with h5py.File(labels_h5, "r") as h5:
                self.labels = h5["binary"][:].astype(np.uint8)
        except (OSError, KeyError) as error:
            self.data.close()
            raise StageError(f"cannot read the prompt inputs ({error}); rebuild them with rrg-stage extract-features "
                             "and rrg-stage label") from None
        n, m = len(self.data), len(self.data.image_study)
        for path, rows, want in ((features_h5, len(text), n), (features_h5, len(pooled), m),
                                 (labels_h5, len(self.labels), n)):
            if rows != want:
                self.data.close()
                raise StageError(f"{path} has {rows} rows where {dataset_h5} has {want}; rebuild it (--force)")
        self.text, self.image = text.astype(np.float32), pooled.astype(np.float32)
        with h5py.File(dataset_h5, "r") as h5:
            views = h5["images/view"].asstr()[:]
        self.view_names = sorted(set(views.tolist()))
        self.view = np.asarray([self.view_names.index(v) for v in views], dtype=np.int64)
        self.image_study = self.data.image_study
        self.ids, self.splits = list(self.data.ids), self.data.splits.copy()
        # where each image row's pixels are: files[image_file[r]], row image_local[r] of it
        self.files = [self.data]
        self.image_file, self.image_local = np.zeros(m, dtype=np.int64), np.arange(m)
        if not len(self.image_rows("train")):
            self.data.close()
            raise StageError(f"{dataset_h5} has no training images to draw reference images from")
        self._group_references()

    def _group_references(self, pool: np.ndarray | None = None) -> None:
        """Index the reference pool (the training images, or `pool`) by view and label vector."""
        pool = self.image_rows("train") if pool is None else pool
        self._groups: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}
        for v in range(len(self.view_names)):
            rows = pool[self.view[pool] == v]
            keys, inverse = np.unique(self.labels[self.image_study[rows]], axis=0, return_inverse=True)
            self._groups[v] = (keys, [rows[inverse.ravel() == k] for k in range(len(keys))])

    def add_training(self, other: "PromptBank") -> int:
        """Append the training studies of `other` (another dataset's bank, which this one takes
        over and closes) that this one does not hold: their images join the training images and
        the reference pool. Refuses a study that is a validation or test study here, and prompt
        inputs of another kind. Returns the number of studies added."""
        problem = None
        leaked = other.data.held_out_in(self.data)
        if leaked:
            problem = (f"{len(leaked)} training studies of {other.data.path} are validation or test studies of "
                       f"{self.data.path} (e.g. {', '.join(leaked[:3])}): training on them would leak into the "
                       "scores. Build the extra dataset with the same split or leave those studies out")
        elif other.data.image_size != self.data.image_size:
            problem = (f"{other.data.path} stores {other.data.image_size}-px images and {self.data.path} "
                       f"{self.data.image_size}-px ones; preprocess the extra dataset with --image-size "
                       f"{self.data.image_size}")
        elif (other.text.shape[1], other.image.shape[1]) != (self.text.shape[1], self.image.shape[1]):
            problem = (f"the extra dataset's features ({other.text.shape[1]}-d text, {other.image.shape[1]}-d image) "
                       f"are not those of {self.data.path} ({self.text.shape[1]}-d, {self.image.shape[1]}-d); "
                       "extract them with the same encoders")
        elif not set(other.view_names) <= set(self.view_names):
            problem = (f"{other.data.path} has views {sorted(set(other.view_names) - set(self.view_names))} that "
                       f"{self.data.path} has not")
        if problem is not None:
            other.close()
            raise StageError(problem)
        held = set(self.ids)
        studies = np.asarray([s for s in other.data.split_indices("train") if other.ids[s] not in held], dtype=np.int64)
        images = np.flatnonzero(np.isin(other.image_study, studies))
        renumber = np.full(len(other.ids), -1, dtype=np.int64)
        renumber[studies] = len(self.ids) + np.arange(len(studies))
        views = np.asarray([self.view_names.index(other.view_names[v]) for v in other.view[images]], dtype=np.int64)
        self.text = np.concatenate([self.text, other.text[studies]])
        self.labels = np.concatenate([self.labels, other.labels[studies]])
        self.ids += [other.ids[s] for s in studies]
        self.splits = np.concatenate([self.splits, np.full(len(studies), "train", dtype=self.splits.dtype)])
        self.image = np.concatenate([self.image, other.image[images]])
        self.view = np.concatenate([self.view, views])
        self.image_study = np.concatenate([self.image_study, renumber[other.image_study[images]]])
        self.image_file = np.concatenate([self.image_file, np.full(len(images), len(self.files))])
        self.image_local = np.concatenate([self.image_local, images])
        self.files.append(other.data)
        self._group_references()
        return len(studies)

    def keep_references(self, study_ids: set[str]) -> None:
        """Draw references only from the training studies with these ids (to score a vision module
        on another dataset's prompts with the reference images it trained with)."""
        keep = np.asarray([i in study_ids for i in self.ids])
        if not keep[self.splits == "train"].any():
            raise StageError(f"none of the given studies is a training study of {self.data.path}")
        pool = self.image_rows("train")
        self._group_references(pool[keep[self.image_study[pool]]])

    def image_rows(self, split: str) -> np.ndarray:
        """Image rows of the studies of `split`."""
        return np.flatnonzero(self.splits[self.image_study] == split)

    def by_file(self, rows: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(file index, positions in `rows`, the rows in that file) for each file `rows` reach."""
        rows = np.asarray(rows, dtype=np.int64)
        out = []
        for which in np.unique(self.image_file[rows]):
            positions = np.flatnonzero(self.image_file[rows] == which)
            out.append((int(which), positions, self.image_local[rows[positions]]))
        return out

    def references(self, labels: np.ndarray, views: np.ndarray, exclude_studies: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
        """A training image row per request: same view, the nearest label vector (exact when there
        is one), never of the excluded study (-1 excludes none)."""
        out = np.empty(len(labels), dtype=np.int64)
        for i, (label, view, exclude) in enumerate(zip(labels, views, exclude_studies)):
            if int(view) not in self._groups:
                raise StageError(f"no training image of view {self.view_names[int(view)]!r} to use as a reference")
            keys, groups = self._groups[int(view)]
            distance = (keys != label[None]).sum(axis=1)
            candidates = np.empty(0, dtype=np.int64)
            for d in np.unique(distance):
                candidates = np.concatenate([groups[k] for k in np.flatnonzero(distance == d)])
                candidates = candidates[self.image_study[candidates] != exclude]
                if len(candidates):
                    break
            if not len(candidates):
                raise StageError("no reference image other than the target's own study; the training split is too small")
            out[i] = rng.choice(candidates)
        return out

    def prompts(self, studies: np.ndarray, reference_rows: np.ndarray, views: np.ndarray) -> Prompts:
        return Prompts(torch.from_numpy(self.text[studies]), torch.from_numpy(self.image[reference_rows]),
                       torch.from_numpy(np.asarray(views, dtype=np.int64)))

    def pixels(self, rows: np.ndarray) -> np.ndarray:
        """(n, S, S) uint8 images of image rows (any order)."""
        size = self.data.image_size
        out = np.empty((len(rows), size, size), dtype=np.uint8)
        for which, positions, local in self.by_file(rows):
            out[positions] = sorted_read(self.files[which].pixels, local)
        return out

    def close(self) -> None:
        for data in self.files:
            data.close()


@dataclass
class PromptPlan:
    """What to generate: for each image, the prompt study, the view and the reference image."""

    studies: np.ndarray      # (k,) prompt study row of each synthetic study
    image_study: np.ndarray  # (m,) the synthetic study (0..k-1) of each image
    views: np.ndarray        # (m,) view index of each image
    real_rows: np.ndarray    # (m,) the prompt study's own image of that view (for comparisons)
    references: np.ndarray   # (m,) reference image row (training split) of each image

    def prompts(self, bank: PromptBank) -> Prompts:
        return bank.prompts(self.studies[self.image_study], self.references, self.views)


def plan_prompts(bank: PromptBank, split: str, n: int | None, seed: int) -> PromptPlan:
    """n synthetic studies whose prompts are the reports of `split` (all of them once when n is None;
    more than the split holds cycles through new permutations, each time with new references); each
    gets one image per view of its prompt study, with a reference never taken from that study."""
    rows = bank.data.split_indices(split)
    rows = rows[bank.data.image_count[rows] > 0]
    if not len(rows):
        raise StageError(f"{bank.data.path} has no {split!r} studies with images to take prompts from")
    rng = np.random.default_rng([seed, 7])
    if n is None:
        studies = rows
    else:
        studies = np.concatenate([rows[rng.permutation(len(rows))] for _ in range(-(-n // len(rows)))])[:n]
    image_rows = [np.arange(bank.data.image_start[s], bank.data.image_start[s] + bank.data.image_count[s])
                  for s in studies]
    image_study = np.concatenate([np.full(len(r), i) for i, r in enumerate(image_rows)])
    real_rows = np.concatenate(image_rows)
    views = bank.view[real_rows]
    prompt_studies = studies[image_study]
    references = bank.references(bank.labels[prompt_studies], views, prompt_studies, rng)
    return PromptPlan(studies, image_study, views, real_rows, references)
