"""Writing and reading `features.h5`.

Layout
  /images/pooled (m, C) float32       global average of the encoder's last feature grid
  /images/pooled_flip (m, C) float32  the same for the horizontally flipped image (XProNet uses both)
  /images/patches (m, h*w, C) float16 the grid as a token sequence, for training on cached features
  /images/study (m,)                  study row of each image (rows follow dataset.h5)
  /studies/text (n, D) float32        report embedding of each study
  /studies/id (n,)
features_adm.h5 (`extract-features --adm`) has the same layout without /studies/text: the
tokens of the ADM-enhanced images, for training EKAGen on cached features.
Images are encoded in batches and text in chunks; both phases resume after an interruption.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stages.core.errors import StageError
from stages.core.resumable import STR, commit, mark_done, open_partial
from stages.data.h5dataset import DatasetFile
from stages.models.image_encoders import ImageEncoder
from stages.models.text_encoders import TextEncoder


class Sliceable(Protocol):
    """Images read by row ranges, like an HDF5 dataset: (m, S, S) uint8."""

    shape: tuple[int, ...]

    def __getitem__(self, rows: slice) -> np.ndarray: ...


def encode_images(encoder: ImageEncoder, images: np.ndarray, input_size: int) -> tuple[torch.Tensor, ...]:
    """(pooled, pooled of the flipped images, patch tokens) for a (B, S, S) uint8 batch."""
    x = encoder.prepare(images)
    if x.shape[-1] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    with torch.inference_mode():
        grid = encoder(torch.cat([x, x.flip(-1)]))
    grid, grid_flip = grid.chunk(2)
    return grid.mean((2, 3)), grid_flip.mean((2, 3)), grid.flatten(2).transpose(1, 2)


def _create(handle: h5py.File, n_images: int, n_studies: int, channels: int, tokens: int, text_dim: int | None) -> None:
    images = handle.create_group("images")
    images.create_dataset("pooled", (n_images, channels), np.float32)
    images.create_dataset("pooled_flip", (n_images, channels), np.float32)
    images.create_dataset("patches", (n_images, tokens, channels), np.float16, chunks=(1, tokens, channels))
    studies = handle.create_group("studies")
    if text_dim is not None:
        studies.create_dataset("text", (n_studies, text_dim), np.float32)
    handle.attrs["text_done"] = 0


def grid_tokens(encoder: ImageEncoder, input_size: int) -> int:
    """Number of patch tokens the encoder produces at this input size."""
    with torch.inference_mode():
        return int(encoder(torch.zeros(1, 3, input_size, input_size)).flatten(2).shape[-1])


def write_features(final: Path, data: DatasetFile, image_encoder: ImageEncoder, text_encoder: TextEncoder | None, *,
                   input_size: int, batch_size: int, key: str, text_chunk: int = 2048,
                   pixels: Sliceable | None = None) -> None:
    """Encode every image and report of `data` into `final`, resuming a cut-short run of the same job.

    `pixels` replaces data.pixels as the images to encode (e.g. ADM-enhanced ones); without a
    text encoder the reports are left out.
    """
    pixels = data.pixels if pixels is None else pixels
    n_images = data.pixels.shape[0]
    tokens = grid_tokens(image_encoder, input_size)
    handle = open_partial(final, key, lambda h: _create(h, n_images, len(data), image_encoder.channels, tokens,
                                                        None if text_encoder is None else text_encoder.dim))
    try:
        images = handle["images"]
        done = int(handle.attrs["n_done"])
        for start in tqdm(range(done, n_images, batch_size), desc="image features", unit="batch"):
            stop = min(start + batch_size, n_images)
            pooled, pooled_flip, patches = encode_images(image_encoder, pixels[start:stop], input_size)
            images["pooled"][start:stop] = pooled.cpu().numpy()
            images["pooled_flip"][start:stop] = pooled_flip.cpu().numpy()
            images["patches"][start:stop] = patches.cpu().numpy().astype(np.float16)
            mark_done(handle, stop)
        if text_encoder is not None:
            done = int(handle.attrs["text_done"])
            for start in tqdm(range(done, len(data), text_chunk), desc="text features", unit="chunk"):
                stop = min(start + text_chunk, len(data))
                handle["studies/text"][start:stop] = text_encoder.embed(data.reports[start:stop], progress=False)
                handle.attrs["text_done"] = stop
                handle.flush()
        del handle.attrs["text_done"]
        images.create_dataset("study", data=data.image_study)
        handle["studies"].create_dataset("id", data=np.asarray(data.ids, dtype=object), dtype=STR)
        handle.attrs.update(grid_tokens=tokens, channels=image_encoder.channels, input_size=input_size,
                            image_encoder=image_encoder.name,
                            text_encoder="" if text_encoder is None else text_encoder.name)
    except BaseException:
        handle.close()
        raise
    commit(handle, final)


@dataclass
class Features:
    """features.h5 in memory except the patch grid, which is read on demand."""

    path: Path
    ids: list[str]
    text: np.ndarray
    pooled: np.ndarray
    pooled_flip: np.ndarray
    image_study: np.ndarray
    attrs: dict

    @classmethod
    def load(cls, path: Path) -> "Features":
        try:
            with h5py.File(path, "r") as h5:
                return cls(Path(path), h5["studies/id"].asstr()[:].tolist(), h5["studies/text"][:],
                           h5["images/pooled"][:], h5["images/pooled_flip"][:], h5["images/study"][:],
                           dict(h5.attrs))
        except (OSError, KeyError) as error:
            raise StageError(f"{path} is not a readable features.h5 ({error}); rebuild it with "
                             "rrg-stage extract-features --force") from None

    def study_visual(self, flipped: bool = False) -> np.ndarray:
        """(n, C) mean of each study's pooled image features over its views."""
        pooled = self.pooled_flip if flipped else self.pooled
        sums = np.zeros((len(self.ids), pooled.shape[1]), dtype=np.float64)
        np.add.at(sums, self.image_study, pooled)
        counts = np.bincount(self.image_study, minlength=len(self.ids))[:, None]
        return (sums / np.maximum(counts, 1)).astype(np.float32)
