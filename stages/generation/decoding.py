"""Turning a trained generator into reports: greedy decoding and batched beam search.

The evaluation protocol decodes with beam search (3) and trigram blocking (R2Gen's setting);
greedy is the cheap alternative. Both decode every study of a batch at once (beam search
runs all studies x beams hypotheses in one `step` call), in eval mode without gradients, and
return each study's token ids without BOS, cut before the first EOS (id 0), at most
max_length - 1 tokens (BOS takes the first of max_length positions, as in the stored ids).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

EOS = 0  # R2Gen: id 0 is BOS, EOS and padding


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for the duration, then the model's previous mode."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(training)


def _until_eos(rows: list[list[int]]) -> list[list[int]]:
    return [row[:row.index(EOS)] if EOS in row else row for row in rows]


def greedy(model: nn.Module, visual: torch.Tensor, visual_mask: torch.Tensor, labels: torch.Tensor | None,
           max_length: int) -> list[list[int]]:
    """The most probable token at every step."""
    with _inference(model):
        state = model.encode(visual, visual_mask, labels)
        prefix = torch.full((visual.shape[0], 1), EOS, dtype=torch.long, device=visual.device)
        done = torch.zeros(visual.shape[0], dtype=torch.bool, device=visual.device)
        for _ in range(max_length - 1):
            token = model.step(state, prefix).argmax(dim=-1).masked_fill(done, EOS)
            prefix = torch.cat([prefix, token[:, None]], dim=1)
            done |= token == EOS
            if bool(done.all()):
                break
        return _until_eos(prefix[:, 1:].tolist())


def block_repeated_trigrams(log_probs: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """-inf for every next token that would complete a trigram the hypothesis already contains.
    log_probs (N, vocab); generated (N, n) tokens so far (without BOS)."""
    if generated.shape[1] < 3:
        return log_probs
    last_two = generated[:, -2:]
    match = (generated[:, :-2] == last_two[:, :1]) & (generated[:, 1:-1] == last_two[:, 1:])
    banned = torch.zeros_like(log_probs).scatter_add_(1, generated[:, 2:], match.to(log_probs.dtype)) > 0
    return log_probs.masked_fill(banned, float("-inf"))


def beam_search(model: nn.Module, visual: torch.Tensor, visual_mask: torch.Tensor, labels: torch.Tensor | None,
                beam_size: int = 3, max_length: int = 60, block_trigrams: bool = True,
                length_penalty: float = 0.0) -> list[list[int]]:
    """Beam search over all studies at once.

    Hypotheses are ranked by sum of log-probabilities / length ** length_penalty, the length
    counting generated tokens with the EOS (0, the default, ranks by the plain sum). A finished
    hypothesis keeps its beam slot and score, competing with the live ones until the end; the
    best-ranked hypothesis of each study is returned.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    with _inference(model):
        batch, device = visual.shape[0], visual.device
        rows = batch * beam_size
        state = model.encode(visual, visual_mask, labels).repeat_interleave(beam_size)
        prefix = torch.full((rows, 1), EOS, dtype=torch.long, device=device)
        scores = torch.full((batch, beam_size), float("-inf"), device=device)
        scores[:, 0] = 0.0  # one live hypothesis per study at the start, so beams do not duplicate
        lengths = torch.zeros(rows, device=device)
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        offsets = torch.arange(batch, device=device)[:, None] * beam_size
        for _ in range(max_length - 1):
            log_probs = model.step(state, prefix)
            vocab = log_probs.shape[1]
            if block_trigrams:
                log_probs = block_repeated_trigrams(log_probs, prefix[:, 1:])
            finished = torch.full_like(log_probs[:1], float("-inf"))
            finished[0, EOS] = 0.0
            log_probs = torch.where(done[:, None], finished, log_probs)
            candidates = scores.reshape(rows, 1) + log_probs
            new_lengths = lengths + (~done).to(lengths.dtype)
            ranks = candidates / new_lengths.clamp(min=1.0)[:, None] ** length_penalty
            best = ranks.view(batch, beam_size * vocab).topk(beam_size, dim=1).indices
            source = (offsets + best // vocab).view(-1)
            token = (best % vocab).view(-1)
            scores = candidates.view(batch, beam_size * vocab).gather(1, best)
            lengths, done = new_lengths[source], done[source] | (token == EOS)
            prefix = torch.cat([prefix[source], token[:, None]], dim=1)
            state = state.select(source)
            if bool(done.all()):
                break
        final = scores / lengths.view(batch, beam_size).clamp(min=1.0) ** length_penalty
        chosen = offsets[:, 0] + final.argmax(dim=1)
        return _until_eos(prefix[chosen, 1:].tolist())
