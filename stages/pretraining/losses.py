"""PRIOR's losses, each a plain function of tensors so it can be checked on toy cases.

- `info_nce`: global image-report alignment (CLIP's symmetric InfoNCE);
- `within_report_nce` and `simsiam`: local alignment. A sentence is contrasted with the image
  context it attended to, the other sentences of the same report giving the negatives (sentences
  of other reports are too often identical, "no pneumothorax", to be negatives); an image patch,
  whose neighbours overlap it through the receptive field, is pulled to its text context without
  negatives (SimSiam), as in the reference;
- `assign` and `gumbel_temperature`: the sentence prototype bank's soft assignment and the
  annealing of its Gumbel-softmax temperature;
- `matched_reconstruction`: report sentences predicted in parallel by a fixed set of queries,
  each sentence matched to one query (Hungarian, on L1 cost) since a report's sentences have no
  inherent order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn


def info_nce(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of pairs: row i of `image` (B, d) belongs with row i of
    `text` (B, d), every other row is a negative; both are L2-normalised, logits = scale * cos."""
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    logits = scale * image @ text.T
    target = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def within_report_nce(sentences: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
                      scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE of each sentence (B, S, d) with its own context (B, S, d) against the
    contexts of the same report's other sentences; `mask` (B, S) marks real sentences. A report of
    one sentence contributes log(1) = 0."""
    s, c = F.normalize(sentences, dim=-1), F.normalize(context, dim=-1)
    logits = scale * s @ c.transpose(1, 2)  # (B, S, S): sentence i of a report vs context j
    pair = mask[:, :, None] & mask[:, None, :]
    logits = logits.masked_fill(~pair, float("-inf"))
    target = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
    rows = mask.reshape(-1)

    def side(x: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(x.reshape(-1, x.shape[-1])[rows], target.reshape(-1)[rows])

    return (side(logits) + side(logits.transpose(1, 2))) / 2


def simsiam(x: torch.Tensor, y: torch.Tensor, predictor: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """Negative-free alignment of x and y (..., d): -cos(predictor(x), stop-grad y), both ways, averaged
    over the positions where `mask` is set (-1 is perfect agreement)."""
    px, py = predictor(x), predictor(y)
    cos = (F.cosine_similarity(px, y.detach(), dim=-1) + F.cosine_similarity(py, x.detach(), dim=-1)) / 2
    return -(cos * mask).sum() / mask.sum().clamp(min=1)


def gumbel_temperature(progress: float, start: float, end: float) -> float:
    """The Gumbel-softmax temperature after `progress` (0..1) of the bank's training: exponential
    from `start` to `end` (soft assignments early, nearly one-hot late)."""
    progress = min(max(progress, 0.0), 1.0)
    return float(start * (end / start) ** progress)


def assign(logits: torch.Tensor, temperature: float, sample: bool) -> torch.Tensor:
    """Soft assignment of each row of `logits` (..., K) to the K prototypes; rows sum to one.
    Training samples Gumbel noise (`sample`); evaluation takes the noise-free softmax."""
    if sample:
        return F.gumbel_softmax(logits, tau=temperature, hard=False, dim=-1)
    return F.softmax(logits / temperature, dim=-1)


def matched_reconstruction(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
                           ) -> tuple[torch.Tensor, list[tuple[np.ndarray, np.ndarray]]]:
    """Mean L1 between each real target sentence (B, S, d; `mask` (B, S)) and the query output
    (B, Q, d) the Hungarian algorithm matches it to; queries left over are free. Also returns the
    (query, sentence) index pairs per report."""
    losses, matches = [], []
    for pred, tgt, m in zip(predicted, target, mask):
        tgt = tgt[m]
        cost = torch.cdist(pred.detach().float(), tgt.detach().float(), p=1).cpu().numpy()
        queries, sentences = linear_sum_assignment(cost)
        matches.append((queries, sentences))
        losses.append((pred[queries] - tgt[sentences]).abs().mean(-1))
    return torch.cat(losses).mean(), matches
