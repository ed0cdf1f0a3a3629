"""EKAGen's knowledge base, built from report embeddings in bounded memory.

PKS (prior knowledge) - one vector per observation: the normalised sum of (a) the mean embedding
of the project's expert descriptions of that observation (`descriptions.json`) and (b) the mean
embedding of the training reports positive for it, each normalised first so that both sources
weigh equally; with no positive training report, (a) alone.

RKS (retrieved knowledge) - for each observation the m training-report embeddings closest to its
PKS by cosine similarity: exact rows of the embedding matrix, kept with their study ids. By
default only reports positive for the observation are candidates (all training reports when
fewer than m are positive), so that a disease's knowledge is never a normal report's template.
RKS replaces PKS in the generator, avoiding the "feature disruption" of synthetic vectors.

Instance-level knowledge (IEK) for an image is the RKS of its predicted observations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from stages.labeling.observations import NO_FINDING, OBSERVATIONS


def expert_descriptions() -> dict[str, list[str]]:
    """The project's own short descriptions of each observation."""
    return json.loads(resources.files("stages.knowledge").joinpath("descriptions.json").read_text())


def knowledge_slots(labels: torch.Tensor, m: int) -> torch.Tensor:
    """(n, K) labels -> (n, K*m) bool: slot block j (observation j's m RKS entries) is on when
    label j is positive (> 0.5); a row with nothing positive gets the No Finding block."""
    positive = labels > 0.5
    positive[:, NO_FINDING] |= ~positive.any(dim=1)
    return positive.repeat_interleave(m, dim=1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class KnowledgeBase:
    observations: list[str]
    pks: np.ndarray         # (14, D)
    rks: np.ndarray         # (14, m, D)
    rks_rows: np.ndarray    # (14, m) rows of the embedding matrix
    rks_ids: list[list[str]]
    rks_scores: np.ndarray  # (14, m) cosine similarity to the PKS
    positives: list[int]    # training reports positive per observation
    text_encoder: str

    @property
    def m(self) -> int:
        return self.rks.shape[1]

    def lookup(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Instance knowledge for (n, 14) binary labels: (n, 14*m, D) vectors and an (n, 14*m) mask.

        Slot block j holds the RKS of observation j and is unmasked when j is predicted; a label
        vector with nothing predicted gets the No Finding entry.
        """
        mask = knowledge_slots(torch.as_tensor(np.asarray(labels, dtype=np.float32)), self.m).numpy()
        k, m, d = self.rks.shape
        return np.broadcast_to(self.rks.reshape(1, k * m, d), (len(mask), k * m, d)), mask


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def build_knowledge(text, ids: list[str], train: np.ndarray, binary: np.ndarray, description_vectors: np.ndarray,
                    m: int, candidates: str, text_encoder: str, chunk: int = 65536) -> KnowledgeBase:
    """Build PKS and RKS streaming over `text` (an (n, D) array or HDF5 dataset) in row chunks.

    `train` is a boolean mask over the rows, `binary` the (n, 14) labels of all rows (only
    training rows are used).
    """
    k, d = binary.shape[1], text.shape[1]
    sums, counts = np.zeros((k, d)), np.zeros(k, dtype=np.int64)
    for start, stop in _chunks(len(ids), chunk):
        rows = train[start:stop]
        block = np.asarray(text[start:stop], dtype=np.float64)[rows]
        labels = binary[start:stop][rows].astype(np.float64)
        sums += labels.T @ block
        counts += labels.sum(axis=0).astype(np.int64)
    prior = _unit(description_vectors.astype(np.float64))
    report_mean = _unit(sums / np.maximum(counts, 1)[:, None])
    pks = _unit(np.where(counts[:, None] > 0, prior + report_mean, prior))
    only_positive = (candidates == "positive") & (counts >= m)

    best_scores = np.full((k, m), -np.inf)
    best_rows = np.full((k, m), -1, dtype=np.int64)
    for start, stop in _chunks(len(ids), chunk):
        rows = np.flatnonzero(train[start:stop])
        scores = _unit(np.asarray(text[start:stop], dtype=np.float64)[rows]) @ pks.T  # (r, k)
        allowed = ~only_positive[None, :] | (binary[start:stop][rows] > 0)
        scores = np.where(allowed, scores, -np.inf).T  # (k, r)
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        merged_rows = np.concatenate([best_rows, np.broadcast_to(rows + start, (k, len(rows)))], axis=1)
        top = np.argsort(-merged_scores, axis=1, kind="stable")[:, :m]
        best_scores = np.take_along_axis(merged_scores, top, axis=1)
        best_rows = np.take_along_axis(merged_rows, top, axis=1)
    if (best_rows < 0).any():
        raise ValueError(f"only {int(train.sum())} training reports: fewer than m={m}; lower --m")
    unique, inverse = np.unique(best_rows.ravel(), return_inverse=True)  # HDF5 reads increasing, unique rows
    rks = np.asarray(text[unique], dtype=np.float32)[inverse].reshape(k, m, d)
    return KnowledgeBase(
        observations=list(OBSERVATIONS[:k]), pks=pks.astype(np.float32), rks=rks,
        rks_rows=best_rows, rks_ids=[[ids[r] for r in row] for row in best_rows],
        rks_scores=best_scores.astype(np.float32), positives=counts.tolist(), text_encoder=text_encoder,
    )
