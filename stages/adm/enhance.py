"""ADM image enhancement (EKAGen): keep what the aggregate mask covers, dim the rest.

The rule is applied to raw intensities (uint8, or floats on a 0..1 / 0..255 scale), before the
encoder's mean/std normalisation: dimming an already normalised image would not darken it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import h5py
import numpy as np
import torch

Image = TypeVar("Image", np.ndarray, torch.Tensor)


def enhance(image: Image, mask: np.ndarray | torch.Tensor, theta: float = 0.4, background: float = 0.4) -> Image:
    """`img*M + background*img*(1-M)` where the mask covers more than `theta` of the image, else `img`.

    A mask covering little of the image is left out because a small CAM region says more about
    the classifier's blind spots than about where the findings are (EKAGen's theta rule).
    `image` is (H, W), (C, H, W), (B, H, W) or (B, C, H, W), numpy or torch; `mask` is (H, W) or
    (B, H, W), binary. The result has the input's type and dtype (integers are rounded).
    """
    if isinstance(image, torch.Tensor):
        m = torch.as_tensor(mask, device=image.device).to(torch.float32)
        covered = m.mean(dim=(-2, -1)) > theta
        weight = torch.where(covered[..., None, None], m + background * (1 - m), torch.ones_like(m))
        if image.ndim == m.ndim + 1:
            weight = weight.unsqueeze(-3)
        out = image.to(torch.float32) * weight
        return out.to(image.dtype) if image.is_floating_point() else out.round_().to(image.dtype)
    image = np.asarray(image)
    m = np.asarray(mask, dtype=np.float32)
    covered = m.mean(axis=(-2, -1)) > theta
    weight = np.where(np.asarray(covered)[..., None, None], m + background * (1 - m), np.float32(1))
    if image.ndim == m.ndim + 1:
        weight = np.expand_dims(weight, -3)
    out = image.astype(np.float32) * weight
    if np.issubdtype(image.dtype, np.floating):
        return out.astype(image.dtype)
    return np.rint(out).astype(image.dtype)


@dataclass
class EnhancedPixels:
    """Images (m, S, S) read by row ranges, each enhanced with its mask (adm.h5 /mask rows)."""

    pixels: h5py.Dataset | np.ndarray
    masks: h5py.Dataset | np.ndarray
    theta: float = 0.4
    background: float = 0.4

    def __post_init__(self) -> None:
        if self.masks.shape != self.pixels.shape:
            raise ValueError(f"masks of shape {self.masks.shape} for images of shape {self.pixels.shape}; "
                             "rebuild adm.h5 from this dataset.h5 (rrg-stage adm-masks --force)")
        self.shape = self.pixels.shape

    def __getitem__(self, rows: slice) -> np.ndarray:
        return enhance(self.pixels[rows], np.asarray(self.masks[rows], dtype=bool), self.theta, self.background)
