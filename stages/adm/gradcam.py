"""Batched Grad-CAM on the encoder's last feature grid, and the aggregate mask (ADM) built from it.

Grad-CAM weights each channel k of the final feature grid A (B, C, h, w) by the spatial mean of
the class score's gradient and keeps the positive part:
    cam_c = ReLU(sum_k mean_ij(d y_c / d A_kij) * A_k).
`grad_cam` returns the signed map inside the ReLU: the mask rule applies the ReLU, and a class's
peak is the maximum of the signed map, which exists even where the evidence is negative
everywhere (a positive finding the classifier scores low), where ReLU leaves nothing to point at.
The backbone runs once per batch without autograd; gradients are taken through the head alone,
for every class of every image in one batched backward pass (`is_grads_batched`), instead of one
forward and one backward through the whole network per image and class.

Mask rule (EKAGen's ADM, in our terms): every map is upsampled to the image (bilinear) and
min-max scaled to [0, 1]; pixels >= the CAM threshold (reference 0.6) of each predicted-positive
class are united, and the union is dilated with a square structuring element (reference 5x5).
EKAGen thresholded a colour-mapped rendering of the map; we threshold the scaled map itself, the
value that a colour map turns into its hot (yellow to red) end.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def grad_cam(classify: Callable[[torch.Tensor], torch.Tensor], grid: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) signed class activation maps (Grad-CAM before its ReLU) for a (B, C, h, w) grid.

    `classify` maps the grid to (B, K) class scores (logits); each image's scores must depend on
    that image's grid only (true of any head that pools per image; dropout must be off).
    """
    grid = grid.detach().requires_grad_(True)
    with torch.enable_grad():
        scores = classify(grid)
        batch, classes = scores.shape
        selectors = torch.eye(classes, dtype=scores.dtype, device=scores.device)[:, None, :].expand(-1, batch, -1)
        (grads,) = torch.autograd.grad(scores, grid, grad_outputs=selectors, is_grads_batched=True)
    weights = grads.mean(dim=(-2, -1))  # (K, B, C)
    return torch.einsum("kbc,bchw->bkhw", weights, grid.detach())


def scale_maps(cams: torch.Tensor, size: int) -> torch.Tensor:
    """Grad-CAM of signed (B, K, h, w) maps: ReLU, upsampled to (B, K, size, size), min-max scaled
    to [0, 1] (flat -> 0)."""
    maps = F.interpolate(cams.relu(), size=(size, size), mode="bilinear", align_corners=False)
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def peaks(cams: torch.Tensor, size: int) -> torch.Tensor:
    """(B, K, 2) int (row, col) image pixel of each signed map's maximum; (-1, -1) for a flat map.

    The maximum of a bilinearly upsampled grid lies on a grid node, so the peak is taken on the
    grid and placed at the centre of its cell (no arbitrary tie-break inside a flat border zone).
    """
    h, w = cams.shape[-2:]
    flat = cams.flatten(2)
    index = flat.argmax(dim=-1)
    rows = ((index // w).to(torch.float64) + 0.5) * size / h
    cols = ((index % w).to(torch.float64) + 0.5) * size / w
    out = torch.stack([rows, cols], dim=-1).floor_().to(torch.int64)
    return out.masked_fill_((flat.amax(dim=-1) <= flat.amin(dim=-1))[..., None], -1)


def aggregate_mask(maps: torch.Tensor, selected: torch.Tensor, threshold: float = 0.6,
                   dilation: int = 5) -> torch.Tensor:
    """(B, S, S) bool: union over the selected classes of `maps >= threshold`, dilated.

    `maps` are scaled maps (B, K, S, S) from `scale_maps`; `selected` (B, K) bool marks the
    classes that enter the mask (the predicted-positive findings). `dilation` is the side of the
    square structuring element (odd; 1 leaves the union as it is).
    """
    if dilation < 1 or dilation % 2 == 0:
        raise ValueError(f"dilation must be an odd positive size, not {dilation}")
    hot = (maps >= threshold) & selected[:, :, None, None].to(torch.bool)
    union = hot.any(dim=1)
    if dilation == 1:
        return union
    grown = F.max_pool2d(union[:, None].to(torch.float32), kernel_size=dilation, stride=1, padding=dilation // 2)
    return grown[:, 0] > 0
