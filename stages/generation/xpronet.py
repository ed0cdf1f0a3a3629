"""XProNet's cross-modal prototype network (Wang, Bhalerao and He, ECCV 2022), written from the
paper's description.

- Shared cross-modal prototype matrix: num_classes label groups x protos_per_class prototypes
  of proto_dim features (reference: 14 x 20, each a unit visual + unit text feature), initialised
  from prototypes.pkl (`kmeans-init`) and learned. Every forward projects it to d_model with one
  linear layer and a LayerNorm, shared by both modalities. The LayerNorm is ours: without it the
  prototypes answer at about a twentieth of the scale of the word embeddings they are fused with,
  and on the demo the reports then ignored their labels (validation CE micro-F1 of the selected
  epoch 0.64, test 0.605; with it 0.74, test 0.774).
- Centring (center_prototypes, ours, on by default): the matrix minus its mean prototype goes into
  that projection. K-means centres of one domain's features are nearly collinear (the demo's:
  mean pairwise cosine 0.78, of the group means 0.94), so the responses to different label sets
  barely differed, and the decoder ignored its labels until it had memorised the training reports
  (validation CE micro-F1 above the all-normal level from epoch 17-20; centred, 12-15). The mean is
  the same for every group, so no label can be told by it; left in, it fills most of each
  prototype's norm, and the LayerNorm scales the differences between groups down with it.
- Label-conditioned querying. The rule, per sample:
    * the groups of its positive labels (label > 0.5) are attended;
    * no positive label: the No Finding group, which is the last group in the CheXpert order
      (stages.labeling.observations), as in the project's binary label convention;
    * unknown labels (`labels=None` for the batch, or a row containing NaN): every group, and the
      sample takes no part in the contrastive loss.
- Top-k sparse multi-head attention (k=15): for each query and head only the k largest scores
  among the selected prototypes are kept and softmax-normalised; every other prototype gets
  weight exactly 0 (fewer than k selected: all of them).
- Responding: the response is fused with its query by a linear layer over [query ; response].
  Visual queries are the encoder outputs (the fused tokens become the decoder's memory);
  textual queries are the decoder's input word embeddings.
- Improved multi-label contrastive loss on each sample's pooled (masked mean) response, over the
  ordered pairs of the batch: a pair sharing at least one positive label aims at cosine similarity
  con_base ** -(hamming / num_classes) (1.5; 1 for identical labels) and pays the shortfall; any
  other pair pays the similarity above con_margin (0.4). Weights 1.0 (image) and 0.1 (text).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.generation.config import GeneratorConfig
from stages.generation.layers import Attention, KeyValues, merge_heads, split_heads


class TopKAttention(Attention):
    """Multi-head attention over prototypes that keeps, per query and head, the k largest scores."""

    def __init__(self, d_model: int, heads: int, topk: int):
        super().__init__(d_model, heads, dropout=0.0)
        self.topk = topk

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, n, d); keys/values (1 or B, heads, M, d/heads); mask (B, M) of selected prototypes.
        Returns the response (B, n, d) and the attention weights (B, heads, n, M)."""
        queries = split_heads(self.query(x), self.heads)
        scores = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        top = scores.topk(min(self.topk, scores.shape[-1]), dim=-1).indices
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True)
        weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
        return self.out(merge_heads(weights @ values)), weights


class PrototypeFusion(nn.Module):
    """Query the prototypes, then fuse: Linear([x ; response])."""

    def __init__(self, d_model: int, heads: int, topk: int):
        super().__init__()
        self.attn = TopKAttention(d_model, heads, topk)
        self.fuse = nn.Linear(2 * d_model, d_model)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        response, _ = self.attn(x, keys, values, mask)
        return self.fuse(torch.cat([x, response], dim=-1)), response


def multilabel_contrastive(pooled: torch.Tensor, positive: torch.Tensor, margin: float, base: float) -> torch.Tensor:
    """Mean over ordered pairs i != j of the batch (pooled (B, d), positive (B, C) bool labels):
    sharing a label -> relu(base ** -(hamming / C) - cos), else relu(cos - margin). 0 for B < 2."""
    if len(pooled) < 2:
        return pooled.sum() * 0.0
    unit = F.normalize(pooled.float(), dim=-1)
    similarity = unit @ unit.T
    labels = positive.float()
    shared = labels @ labels.T > 0
    hamming = (labels[:, None, :] != labels[None, :, :]).sum(-1)
    target = base ** (-hamming / labels.shape[1])
    loss = torch.where(shared, F.relu(target - similarity), F.relu(similarity - margin))
    pairs = ~torch.eye(len(pooled), dtype=torch.bool, device=pooled.device)
    return loss[pairs].mean()


@dataclass
class Conditioning:
    """One batch's access to the prototypes: which groups each sample sees, and both sides' keys/values."""

    groups: torch.Tensor   # (B, G) bool, the groups each sample attends
    known: torch.Tensor    # (B,) bool, labels known (takes part in the contrastive loss)
    mask: torch.Tensor     # (B, G * N) bool, the same per prototype
    visual: KeyValues      # (1, heads, G * N, d / heads) each, shared by the batch
    text: KeyValues

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Conditioning":
        """Apply a row operation (select, repeat) to the per-sample fields."""
        return replace(self, groups=fn(self.groups), known=fn(self.known), mask=fn(self.mask))


class CrossModalPrototypes(nn.Module):
    """The shared prototype matrix and its visual and textual querying/responding modules."""

    def __init__(self, config: GeneratorConfig, init: np.ndarray | None = None):
        super().__init__()
        groups, per_group, dim = config.num_classes, config.protos_per_class, config.proto_dim
        if init is None:  # placeholder values; a checkpoint's state_dict replaces them
            matrix = torch.randn(groups * per_group, dim) / math.sqrt(dim)
        else:
            init = np.asarray(init, dtype=np.float32)
            if init.shape not in ((groups, per_group, dim), (groups * per_group, dim)):
                raise ValueError(
                    f"prototype matrix of shape {init.shape} does not fit the generator config, which expects "
                    f"(num_classes, protos_per_class, proto_dim) = ({groups}, {per_group}, {dim}) or "
                    f"({groups * per_group}, {dim}); rebuild prototypes.pkl (rrg-stage kmeans-init --per-group "
                    f"{per_group}) or set --protos-per-class to the file's group size")
            matrix = torch.from_numpy(init.reshape(groups * per_group, dim).copy())
        self.matrix = nn.Parameter(matrix)
        self.project = nn.Sequential(nn.Linear(dim, config.d_model), nn.LayerNorm(config.d_model))
        self.visual = PrototypeFusion(config.d_model, config.heads, config.topk)
        self.text = PrototypeFusion(config.d_model, config.heads, config.topk)
        self.num_classes, self.per_group = groups, per_group
        self.margin, self.base = config.con_margin, config.con_base
        self.center = config.center_prototypes

    def select(self, labels: torch.Tensor | None, batch: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(groups (B, G) bool, known (B,) bool) by the rule in the module docstring."""
        if labels is None:
            return (torch.ones(batch, self.num_classes, dtype=torch.bool, device=device),
                    torch.zeros(batch, dtype=torch.bool, device=device))
        if labels.shape != (batch, self.num_classes):
            raise ValueError(f"labels of shape {tuple(labels.shape)}; expected ({batch}, {self.num_classes})")
        known = ~torch.isnan(labels).any(dim=1)
        groups = labels > 0.5
        groups[:, -1] |= ~groups.any(dim=1)
        groups[~known] = True
        return groups, known

    def condition(self, labels: torch.Tensor | None, batch: int, device: torch.device) -> Conditioning:
        groups, known = self.select(labels, batch, device)
        matrix = self.matrix - self.matrix.mean(dim=0, keepdim=True) if self.center else self.matrix
        prototypes = self.project(matrix)[None]
        return Conditioning(groups, known, groups.repeat_interleave(self.per_group, dim=1),
                            self.visual.attn.keys_values(prototypes), self.text.attn.keys_values(prototypes))

    def respond_visual(self, x: torch.Tensor, condition: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
        return self.visual(x, *condition.visual, condition.mask)

    def respond_text(self, x: torch.Tensor, condition: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text(x, *condition.text, condition.mask)

    def contrastive(self, response: torch.Tensor, mask: torch.Tensor, condition: Conditioning) -> torch.Tensor:
        """The loss on responses (B, n, d) pooled over their real positions (mask (B, n))."""
        weights = mask.to(response.dtype)[..., None]
        pooled = (response * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return multilabel_contrastive(pooled[condition.known], condition.groups[condition.known],
                                      self.margin, self.base)
