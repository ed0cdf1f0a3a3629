"""Visual tokens of a study: its views' patch grids one after another, with a mask for missing views.

Both visual modes hand the generator the same layout, tokens (B, max_views * P, C) and a token
mask (B, max_views * P) that is False for every patch of a missing view (IU X-Ray has two views,
MIMIC-CXR one or more; studies with fewer views are padded):
- end to end, `VisualExtractor` runs an ImageEncoder on the pixels and is trained with the
  generator;
- cached, `cached_tokens` lays out the patch tokens that `extract-features` stored in
  features.h5 (frozen encoder), read per batch by the training data code.
Because the cached mode has no module of its own, the learned view embedding lives in
`VisualTokens`, which the generator owns: it projects tokens to d_model and adds where each came
from (a sinusoidal code of the patch position in its grid and an embedding of its view).
"""

from __future__ import annotations

import torch
from torch import nn

from stages.generation.layers import sinusoid
from stages.models.image_encoders import ImageEncoder


def cached_tokens(views: torch.Tensor, view_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V, P, C) patch tokens per view (features.h5 `images/patches`, any float dtype) and a
    (B, V) view mask -> float32 tokens (B, V*P, C) and token mask (B, V*P)."""
    patches = views.shape[2]
    return views.flatten(1, 2).float(), view_mask.bool().repeat_interleave(patches, dim=1)


class VisualExtractor(nn.Module):
    """An ImageEncoder applied to each present view of each study (end-to-end training)."""

    def __init__(self, encoder: ImageEncoder, max_views: int = 2):
        super().__init__()
        self.encoder, self.max_views = encoder, max_views

    def forward(self, images: torch.Tensor, view_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, V, S, S) uint8, or float in [0, 1]; view_mask (B, V) bool, V <= max_views.
        Returns tokens (B, max_views * P, C) (zeros for missing views) and their mask."""
        batch, views = images.shape[:2]
        if views > self.max_views:
            raise ValueError(f"{views} views per study but this extractor takes at most {self.max_views}")
        mask = torch.zeros(batch, self.max_views, dtype=torch.bool, device=view_mask.device)
        mask[:, :views] = view_mask.bool()
        present = images[view_mask.bool()].to(self.encoder.mean.device)
        x = present.float().div(255.0) if present.dtype == torch.uint8 else present.float()
        grid = self.encoder((x[:, None].expand(-1, 3, -1, -1) - self.encoder.mean) / self.encoder.std)
        patches = grid.flatten(2).transpose(1, 2)
        tokens = patches.new_zeros(batch, self.max_views, *patches.shape[1:])
        tokens[mask.to(tokens.device)] = patches
        return cached_tokens(tokens, mask.to(tokens.device))


class VisualTokens(nn.Module):
    """visual_dim -> d_model projection plus patch-position codes and a learned view embedding."""

    def __init__(self, visual_dim: int, d_model: int, max_views: int, dropout: float):
        super().__init__()
        self.visual_dim, self.max_views = visual_dim, max_views
        self.project = nn.Linear(visual_dim, d_model)
        self.views = nn.Embedding(max_views, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, max_views * P, visual_dim) -> (B, max_views * P, d_model)."""
        if tokens.shape[-1] != self.visual_dim:
            raise ValueError(f"visual tokens have {tokens.shape[-1]} channels but the generator was built for "
                             f"visual_dim={self.visual_dim}")
        length = tokens.shape[1]
        if length % self.max_views:
            raise ValueError(f"{length} visual tokens cannot be {self.max_views} views of equal patch grids; "
                             "pad every study to max_views views")
        index = torch.arange(length, device=tokens.device)
        patches = length // self.max_views
        where = sinusoid(index % patches, self.views.embedding_dim) + self.views(index // patches)
        return self.drop(self.project(tokens) + where)
