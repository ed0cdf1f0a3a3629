"""Turning a trained generator into reports: greedy decoding, batched beam search and minimum Bayes
risk (MBR) decoding over sampled reports.

The evaluation protocol decodes with beam search (3) and trigram blocking (R2Gen's setting);
greedy is the cheap alternative. Beam search looks for the most probable report, which is
shorter than a typical one (most of the probability of the words after "the lungs are clear ." is
on EOS, yet most reports go on); MBR instead picks, of reports sampled from the model, the one most
like the others under sentence BLEU, i.e. the report with the highest expected BLEU under the
model: an option, outside the protocol, and recorded as the run's decoding. All of them decode
every study of a batch at once (beam search runs all studies x beams hypotheses in one `step`
call), in eval mode without gradients, and return each study's token ids without BOS, cut before
the first EOS, at most max_length - 1 tokens (BOS takes the first of max_length positions, as in
the stored ids). R2Gen's vocabulary
uses id 0 for both BOS and EOS; a pretrained decoder passes its own tokenizer's.
Trigram blocking works on words: R2Gen's vocabulary has one token per word; for a sub-word
vocabulary (`word_start`: which ids begin a word) a hypothesis may not complete a word that would
repeat a word trigram it already holds, so "pl ##eur ##al" can appear twice but "no pleural
effusion" cannot.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

EOS = 0  # R2Gen: id 0 is BOS, EOS and padding


@dataclass
class Decoding:
    """How a run's reports are decoded; train records it in run.json ("decoding") and uses it for
    validation, evaluate and generate repeat it."""

    beam_size: int = 3
    max_length: int | None = None  # None: the model's maximum report length
    batch_size: int = 16
    length_penalty: float = 0.0  # beam search ranks by log-probability / length ** length_penalty
    mbr_samples: int = 0  # above 0: MBR over this many sampled reports per study instead of beam search
    mbr_temperature: float = 1.0  # MBR: the samples' temperature
    seed: int = 0  # MBR: the samples' random draws (with the batch size, they fix every report)

    def validate(self) -> None:
        if self.beam_size < 1 or self.batch_size < 1:
            raise ValueError(f"the beam size and the batch size must be at least 1, not {self.beam_size} and "
                             f"{self.batch_size}")
        if self.mbr_samples < 0 or self.mbr_samples == 1:
            raise ValueError(f"--mbr-samples must be 0 (beam search) or at least 2 (MBR compares each sample with "
                             f"the others), not {self.mbr_samples}")
        if self.mbr_temperature <= 0:
            raise ValueError(f"--mbr-temperature must be above 0, not {self.mbr_temperature}")

    def generator(self, device: torch.device | str) -> torch.Generator | None:
        """MBR's random draws, seeded afresh, so every decoding of a split repeats them (None: beam search)."""
        return torch.Generator(device=device).manual_seed(self.seed) if self.mbr_samples else None


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


def _until_eos(rows: list[list[int]], eos: int) -> list[list[int]]:
    return [row[:row.index(eos)] if eos in row else row for row in rows]


def greedy(model: nn.Module, visual: torch.Tensor, visual_mask: torch.Tensor, labels: torch.Tensor | None,
           max_length: int, *, bos: int = EOS, eos: int = EOS) -> list[list[int]]:
    """The most probable token at every step."""
    with _inference(model):
        state = model.encode(visual, visual_mask, labels)
        prefix = torch.full((visual.shape[0], 1), bos, dtype=torch.long, device=visual.device)
        done = torch.zeros(visual.shape[0], dtype=torch.bool, device=visual.device)
        for _ in range(max_length - 1):
            token = model.step(state, prefix).argmax(dim=-1).masked_fill(done, eos)
            prefix = torch.cat([prefix, token[:, None]], dim=1)
            done |= token == eos
            if bool(done.all()):
                break
        return _until_eos(prefix[:, 1:].tolist(), eos)


def block_repeated_trigrams(log_probs: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """-inf for every next token that would complete a trigram the hypothesis already contains.
    log_probs (N, vocab); generated (N, n) tokens so far (without BOS)."""
    if generated.shape[1] < 3:
        return log_probs
    last_two = generated[:, -2:]
    match = (generated[:, :-2] == last_two[:, :1]) & (generated[:, 1:-1] == last_two[:, 1:])
    banned = torch.zeros_like(log_probs).scatter_add_(1, generated[:, 2:], match.to(log_probs.dtype)) > 0
    return log_probs.masked_fill(banned, float("-inf"))


def block_repeated_word_trigrams(log_probs: torch.Tensor, generated: torch.Tensor, word_start: torch.Tensor,
                                 eos: int) -> torch.Tensor:
    """Sub-word vocabularies: when a hypothesis's last three words (its last word ends with the next
    token if that starts a word, or is EOS) repeat a trigram of words it already contains, -inf for
    every token that would end that word. log_probs (N, vocab); generated (N, n) tokens so far
    (without BOS); word_start (vocab,) bool."""
    rows, length = generated.shape
    if length < 4:
        return log_probs
    starts = word_start[generated]
    starts[:, 0] = True
    word = starts.long().cumsum(dim=1) - 1                        # (N, n) word index of each token
    last = word[:, -1]                                            # index of each hypothesis's last word
    if int(last.max()) < 3:  # a repeat needs an earlier trigram that ends before the last one
        return log_probs
    positions = torch.arange(length, device=generated.device).expand(rows, -1)
    offset = positions - torch.cummax(torch.where(starts, positions, 0), dim=1).values
    words = generated.new_full((rows, int(word.max()) + 1, int(offset.max()) + 1), -1)
    words[torch.arange(rows, device=generated.device)[:, None], word, offset] = generated
    trigrams = torch.cat([words[:, :-2], words[:, 1:-1], words[:, 2:]], dim=2)   # (N, W-2, 3 * longest)
    final = trigrams[torch.arange(rows, device=generated.device), (last - 2).clamp(min=0)]
    earlier = torch.arange(trigrams.shape[1], device=generated.device)[None] <= (last - 3)[:, None]
    pending = ((trigrams == final[:, None]).all(dim=2) & earlier).any(dim=1)
    ends_word = word_start.clone()
    ends_word[eos] = True
    return log_probs.masked_fill(pending[:, None] & ends_word[None], float("-inf"))


def beam_search(model: nn.Module, visual: torch.Tensor, visual_mask: torch.Tensor, labels: torch.Tensor | None,
                beam_size: int = 3, max_length: int = 60, block_trigrams: bool = True,
                length_penalty: float = 0.0, *, bos: int = EOS, eos: int = EOS,
                word_start: torch.Tensor | None = None) -> list[list[int]]:
    """Beam search over all studies at once.

    Hypotheses are ranked by sum of log-probabilities / length ** length_penalty, the length
    counting generated tokens with the EOS (0, the default, ranks by the plain sum). A finished
    hypothesis keeps its beam slot and score, competing with the live ones until the end; the
    best-ranked hypothesis of each study is returned. `word_start` (vocab,) bool marks the ids
    that begin a word in a sub-word vocabulary (None: every token is a word).
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    with _inference(model):
        batch, device = visual.shape[0], visual.device
        rows = batch * beam_size
        state = model.encode(visual, visual_mask, labels).repeat_interleave(beam_size)
        prefix = torch.full((rows, 1), bos, dtype=torch.long, device=device)
        scores = torch.full((batch, beam_size), float("-inf"), device=device)
        scores[:, 0] = 0.0  # one live hypothesis per study at the start, so beams do not duplicate
        lengths = torch.zeros(rows, device=device)
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        offsets = torch.arange(batch, device=device)[:, None] * beam_size
        for _ in range(max_length - 1):
            log_probs = model.step(state, prefix)
            vocab = log_probs.shape[1]
            if block_trigrams and word_start is None:
                log_probs = block_repeated_trigrams(log_probs, prefix[:, 1:])
            elif block_trigrams:
                log_probs = block_repeated_word_trigrams(log_probs, prefix[:, 1:], word_start, eos)
            finished = torch.full_like(log_probs[:1], float("-inf"))
            finished[0, eos] = 0.0
            log_probs = torch.where(done[:, None], finished, log_probs)
            candidates = scores.reshape(rows, 1) + log_probs
            new_lengths = lengths + (~done).to(lengths.dtype)
            ranks = candidates / new_lengths.clamp(min=1.0)[:, None] ** length_penalty
            best = ranks.view(batch, beam_size * vocab).topk(beam_size, dim=1).indices
            source = (offsets + best // vocab).view(-1)
            token = (best % vocab).view(-1)
            scores = candidates.view(batch, beam_size * vocab).gather(1, best)
            lengths, done = new_lengths[source], done[source] | (token == eos)
            prefix = torch.cat([prefix[source], token[:, None]], dim=1)
            state = state.select(source)
            if bool(done.all()):
                break
        final = scores / lengths.view(batch, beam_size).clamp(min=1.0) ** length_penalty
        chosen = offsets[:, 0] + final.argmax(dim=1)
        return _until_eos(prefix[chosen, 1:].tolist(), eos)


def sample(model: nn.Module, visual: torch.Tensor, visual_mask: torch.Tensor, labels: torch.Tensor | None,
           num_samples: int, max_length: int, *, temperature: float = 1.0, generator: torch.Generator | None = None,
           bos: int = EOS, eos: int = EOS) -> list[list[list[int]]]:
    """num_samples reports per study, each token drawn from the model's next-token distribution
    (sharpened by temperature < 1); the draws follow `generator`, so a seeded one repeats them.
    A report that has ended leaves the batch, so the cost follows the reports' total length."""
    if num_samples < 1 or temperature <= 0:
        raise ValueError(f"need num_samples >= 1 and temperature > 0, got {num_samples} and {temperature}")
    with _inference(model):
        batch = visual.shape[0]
        state = model.encode(visual, visual_mask, labels).repeat_interleave(num_samples)
        prefix = torch.full((batch * num_samples, 1), bos, dtype=torch.long, device=visual.device)
        live = torch.arange(batch * num_samples, device=visual.device)  # the rows still being written
        reports: list[list[int]] = [[] for _ in range(batch * num_samples)]
        for _ in range(max_length - 1):
            probs = (model.step(state, prefix) / temperature).softmax(dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)
            prefix = torch.cat([prefix, token], dim=1)
            ended = token[:, 0] == eos
            if bool(ended.any()):
                for row, ids in zip(live[ended].tolist(), prefix[ended, 1:-1].tolist()):
                    reports[row] = ids
                going = (~ended).nonzero()[:, 0]
                live, prefix, state = live[going], prefix[going], state.select(going)
                if not len(live):
                    break
        for row, ids in zip(live.tolist(), prefix[:, 1:].tolist()):
            reports[row] = ids
        return [reports[i * num_samples:(i + 1) * num_samples] for i in range(batch)]


def _ngrams(tokens: Sequence[int], n: int = 4) -> list[Counter]:
    return [Counter(tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1)) for k in range(1, n + 1)]


def sentence_bleu(hypothesis: Sequence[int], reference: Sequence[int], n: int = 4,
                  grams: tuple[list[Counter], list[Counter]] | None = None) -> float:
    """BLEU-n of one hypothesis against one reference with add-one smoothing of the 2..n-gram
    precisions (Lin and Och's BLEU+1), so that a report sharing no 4-gram still scores by its
    shorter matches. `grams`: both sides' `_ngrams`, when the caller has them already."""
    if not hypothesis or not reference:
        return 0.0
    hyp, ref = grams or (_ngrams(hypothesis, n), _ngrams(reference, n))
    log_precision = 0.0
    for k in range(n):
        matches = sum((hyp[k] & ref[k]).values()) + (k > 0)
        if matches == 0:
            return 0.0
        log_precision += math.log(matches / (max(len(hypothesis) - k, 0) + (k > 0))) / n
    brevity = min(0.0, 1.0 - len(reference) / len(hypothesis))
    return math.exp(log_precision + brevity)


def consensus(candidates: Sequence[Sequence[int]]) -> list[int]:
    """The candidate with the highest mean sentence BLEU against the other candidates (the MBR
    choice when the candidates are samples from the model); ties go to the first."""
    grams = [_ngrams(c) for c in candidates]
    best, best_utility = 0, -1.0
    for i, hypothesis in enumerate(candidates):
        utility = sum(sentence_bleu(hypothesis, reference, grams=(grams[i], grams[j]))
                      for j, reference in enumerate(candidates) if j != i)
        if utility > best_utility:
            best, best_utility = i, utility
    return list(candidates[best])


def mbr(model: nn.Module, visual: torch.Tensor, visual_mask: torch.Tensor, labels: torch.Tensor | None,
        num_samples: int = 16, max_length: int = 60, *, temperature: float = 1.0,
        generator: torch.Generator | None = None, bos: int = EOS, eos: int = EOS) -> list[list[int]]:
    """Minimum Bayes risk decoding: sample num_samples reports per study and return each study's
    `consensus`."""
    samples = sample(model, visual, visual_mask, labels, num_samples, max_length, temperature=temperature,
                     generator=generator, bos=bos, eos=eos)
    return [consensus(candidates) for candidates in samples]
