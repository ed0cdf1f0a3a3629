"""The report generator: an encoder-decoder Transformer over visual tokens, optionally XProNet.

The encoder reads the projected visual tokens of a study's views (missing views masked out); the
causal decoder reads the report's word embeddings with sinusoidal positions and attends to the
encoder output. Both stacks are pre-norm (see `layers`). With `model="xpronet"` the cross-modal
prototype network (`xpronet`) fuses prototype responses into the encoder output and into the
decoder's input embeddings, and adds its contrastive losses. With `model="ekagen"` every decoder
layer also attends to the study's instance-level expert knowledge (`ekagen`), selected by its labels.

Training calls `forward`; decoding calls `encode` once and then `step` with the growing prefix.
`step` keeps a key/value cache in the state and only runs the newest token when the prefix
extends the one it saw last (otherwise it decodes the whole prefix again).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.generation.config import GeneratorConfig
from stages.generation.ekagen import ExpertKnowledge
from stages.generation.layers import Decoder, Encoder, KeyValues, Knowledge, sinusoid
from stages.generation.visual import VisualTokens
from stages.generation.xpronet import Conditioning, CrossModalPrototypes


@dataclass
class GeneratorOutput:
    """What a training forward pass returns."""

    logits: torch.Tensor              # (B, T-1, vocab) predicting targets[:, 1:]
    loss: torch.Tensor                # the total training loss
    terms: dict[str, torch.Tensor]    # detached parts: ce (and img_con, txt_con for XProNet)


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, T-1, vocab) predicting targets[:, 1:] over the positions
    target_mask[:, 1:] marks (the words and EOS; never padding)."""
    gold = target_mask[:, 1:].to(logits.dtype)
    token_ce = F.cross_entropy(logits.float().transpose(1, 2), targets[:, 1:], reduction="none")
    return (token_ce * gold).sum() / gold.sum().clamp(min=1.0)


@dataclass
class EncoderState:
    """What decoding needs per hypothesis; `step` fills in the cache."""

    memory: list[KeyValues]            # each decoder layer's cross-attention keys/values (B, heads, L, d/heads)
    memory_mask: torch.Tensor          # (B, L) bool
    condition: Conditioning | None     # XProNet's prototype access, None for the other models
    knowledge: Knowledge | None        # EKAGen's per-layer knowledge keys/values and slot mask
    cache: list[KeyValues] | None = None   # each decoder layer's self-attention keys/values of `prefix`
    prefix: torch.Tensor | None = None     # (B, t) the tokens the cache holds

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "EncoderState":
        def pairs(kvs: list[KeyValues] | None) -> list[KeyValues] | None:
            return None if kvs is None else [(fn(k), fn(v)) for k, v in kvs]

        knowledge = None if self.knowledge is None else Knowledge(pairs(self.knowledge.keys_values),
                                                                  fn(self.knowledge.mask))
        return replace(self, memory=pairs(self.memory), memory_mask=fn(self.memory_mask),
                       condition=None if self.condition is None else self.condition.map(fn), knowledge=knowledge,
                       cache=pairs(self.cache), prefix=None if self.prefix is None else fn(self.prefix))

    def repeat_interleave(self, k: int) -> "EncoderState":
        """Each row k times in a row (study-major), e.g. for k beams per study."""
        return self._map(lambda t: t.repeat_interleave(k, dim=0))

    def select(self, index: torch.Tensor) -> "EncoderState":
        """Rows `index` (B',) int64, in that order."""
        return self._map(lambda t: t.index_select(0, index))


class ReportGenerator(nn.Module):
    """Visual tokens -> report token log-probabilities; see the module docstring."""

    word_start: torch.Tensor | None = None  # every token of R2Gen's vocabulary is a word

    def __init__(self, config: GeneratorConfig, prototypes: np.ndarray | None = None,
                 knowledge: np.ndarray | None = None):
        super().__init__()
        config.validate()
        if prototypes is not None and config.model != "xpronet":
            raise ValueError(f"prototypes were given but model={config.model!r} does not use them")
        if knowledge is not None and config.model != "ekagen":
            raise ValueError(f"knowledge was given but model={config.model!r} does not use it")
        self.config = config
        d = config.d_model
        self.visual = VisualTokens(config.visual_dim, d, config.max_views, config.dropout)
        self.encoder = Encoder(d, config.heads, config.d_ff, config.dropout, config.layers)
        self.embed = nn.Embedding(config.vocab_size, d)
        nn.init.normal_(self.embed.weight, std=d ** -0.5)  # unit-scale entries once scaled by sqrt(d)
        ekagen = config.model == "ekagen"
        self.decoder = Decoder(d, config.heads, config.d_ff, config.dropout, config.layers, knowledge=ekagen)
        self.head = nn.Linear(d, config.vocab_size)
        self.drop = nn.Dropout(config.dropout)
        self.xpronet = CrossModalPrototypes(config, prototypes) if config.model == "xpronet" else None
        self.knowledge = ExpertKnowledge(config, knowledge) if ekagen else None

    def _knowledge(self, labels: torch.Tensor | None, batch: int) -> Knowledge | None:
        if self.knowledge is None:
            return None
        return self.decoder.knowledge(*self.knowledge(labels, batch))

    def _encode(self, visual: torch.Tensor, visual_mask: torch.Tensor, labels: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, Conditioning | None, torch.Tensor | None]:
        """(memory (B, L, d), mask (B, L), XProNet conditioning, visual prototype response)."""
        mask = visual_mask.bool()
        if not bool(mask.any(dim=1).all()):
            raise ValueError("a study has no visual token (every view masked); leave such studies out")
        memory = self.encoder(self.visual(visual.masked_fill(~mask[..., None], 0.0)), mask)
        if self.xpronet is None:
            return memory, mask, None, None
        condition = self.xpronet.condition(labels, memory.shape[0], memory.device)
        memory, response = self.xpronet.respond_visual(memory, condition)
        return memory, mask, condition, response

    def _words(self, tokens: torch.Tensor, start: int, condition: Conditioning | None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decoder inputs for tokens at positions start.. (and XProNet's text response)."""
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        x = self.drop(self.embed(tokens) * math.sqrt(self.config.d_model) + sinusoid(positions, self.config.d_model))
        if condition is None:
            return x, None
        return self.xpronet.respond_text(x, condition)

    def forward(self, visual: torch.Tensor, visual_mask: torch.Tensor, targets: torch.Tensor,
                target_mask: torch.Tensor, labels: torch.Tensor | None = None) -> GeneratorOutput:
        """visual (B, L, visual_dim), visual_mask (B, L); targets (B, T) [0, w1..wn, 0, pad 0] with
        target_mask (B, T) True on BOS..EOS; labels (B, num_classes) binary or None."""
        memory, mask, condition, visual_response = self._encode(visual, visual_mask, labels)
        words, text_response = self._words(targets[:, :-1], 0, condition)
        hidden, _ = self.decoder(words, None, self.decoder.memory(memory), mask,
                                 self._knowledge(labels, memory.shape[0]))
        logits = self.head(hidden)
        ce = token_cross_entropy(logits, targets, target_mask)
        terms = {"ce": ce.detach()}
        loss = ce
        if condition is not None:
            img = self.xpronet.contrastive(visual_response, mask, condition)
            txt = self.xpronet.contrastive(text_response, target_mask[:, :-1], condition)
            loss = loss + self.config.img_con_weight * img + self.config.txt_con_weight * txt
            terms.update(img_con=img.detach(), txt_con=txt.detach())
        return GeneratorOutput(logits, loss, terms)

    def encode(self, visual: torch.Tensor, visual_mask: torch.Tensor,
               labels: torch.Tensor | None = None) -> EncoderState:
        memory, mask, condition, _ = self._encode(visual, visual_mask, labels)
        return EncoderState(self.decoder.memory(memory), mask, condition, self._knowledge(labels, memory.shape[0]))

    def step(self, state: EncoderState, prefix: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B', vocab) of the token after `prefix` (B', t) (BOS first); updates
        the state's cache, so later prefixes that extend this one only run their newest token."""
        t = prefix.shape[1]
        cached = state.prefix
        if state.cache is not None and cached is not None and cached.shape == (prefix.shape[0], t - 1) \
                and torch.equal(cached, prefix[:, :-1]):
            new, past, start = prefix[:, -1:], state.cache, t - 1
        else:
            new, past, start = prefix, None, 0
        words, _ = self._words(new, start, state.condition)
        hidden, state.cache = self.decoder(words, past, state.memory, state.memory_mask, state.knowledge)
        state.prefix = prefix
        return F.log_softmax(self.head(hidden[:, -1]).float(), dim=-1)


def build_generator(config: GeneratorConfig, prototypes: np.ndarray | None = None,
                    knowledge: np.ndarray | None = None, decoder_weights: Path | None = None) -> nn.Module:
    """A generator for `config`; XProNet's prototype matrix starts from `prototypes`
    ((num_classes, protos_per_class, proto_dim) as in prototypes.pkl, or flattened) and EKAGen's
    knowledge is `knowledge` (knowledge.pkl's RKS, (num_classes, knowledge_per_class,
    knowledge_dim)), both placeholders when a checkpoint will be loaded. The warm-started decoder
    starts from the weights in `decoder_weights` (a folder), or from transformers' initialisation
    when None. ValueError if they do not fit."""
    if config.model == "warmstart":
        if prototypes is not None or knowledge is not None:
            raise ValueError("prototypes or knowledge were given but the warmstart model uses neither")
        from stages.generation.warmstart import WarmStartGenerator

        return WarmStartGenerator(config, decoder_weights)
    if decoder_weights is not None:
        raise ValueError(f"decoder weights were given but model={config.model!r} has no pretrained decoder")
    return ReportGenerator(config, prototypes, knowledge)
