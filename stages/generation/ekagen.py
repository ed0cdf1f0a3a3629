"""EKAGen's instance-level expert knowledge (Bu et al., CVPR 2024), written from the paper's description.

The knowledge base (`build-knowledge`, knowledge.pkl) holds for each of the num_classes
observations m real training-report embeddings nearest to that observation's prior knowledge
(RKS). A study's instance-level knowledge (IEK) is the RKS of the observations it is labelled
with: at training time its pseudo-labels, at test time the diagnosis classifier's predictions
(`stages.training.conditioning`); a study with nothing positive gets the No Finding entries.

The RKS matrix is a fixed buffer (it is data, saved with the model so a checkpoint is
self-contained); a linear projection with LayerNorm maps it to d_model once per forward, and
every decoder layer attends to the study's selected slots (`layers.DecoderLayer`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from stages.generation.config import GeneratorConfig
from stages.knowledge.base import knowledge_slots


class ExpertKnowledge(nn.Module):
    """The RKS matrix (num_classes, m, knowledge_dim) and its projection to the decoder width."""

    def __init__(self, config: GeneratorConfig, rks: np.ndarray | None = None):
        super().__init__()
        shape = (config.num_classes, config.knowledge_per_class, config.knowledge_dim)
        if rks is None:
            rks = np.zeros(shape, dtype=np.float32)  # placeholder: a checkpoint's buffer follows
        rks = np.asarray(rks, dtype=np.float32)
        if rks.shape != shape:
            raise ValueError(f"knowledge of shape {rks.shape} does not fit the generator ({shape} = num_classes x "
                             "knowledge_per_class x knowledge_dim); rebuild knowledge.pkl or the model")
        self.m = config.knowledge_per_class
        self.register_buffer("rks", torch.from_numpy(rks).flatten(0, 1))
        self.project = nn.Sequential(nn.Linear(config.knowledge_dim, config.d_model), nn.LayerNorm(config.d_model))

    def forward(self, labels: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected knowledge tokens (1, num_classes*m, d_model) and each study's slot mask (B, num_classes*m)."""
        if labels is None:
            raise ValueError("EKAGen needs labels to select each study's knowledge (predicted ones at test time)")
        if labels.shape != (batch, self.rks.shape[0] // self.m):
            raise ValueError(f"labels of shape {tuple(labels.shape)} for {batch} studies and "
                             f"{self.rks.shape[0] // self.m} observations")
        return self.project(self.rks)[None], knowledge_slots(labels, self.m)
