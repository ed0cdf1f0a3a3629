"""Transformer blocks for the report generator: pre-norm encoder and decoder stacks.

Pre-norm (LayerNorm before each sublayer, a final LayerNorm after the stack) because it trains
stably at the reference learning rates (1e-3 / 2e-3) without warm-up. One decoder code path
serves training (the whole shifted target at once), decoding of a whole prefix and incremental
decoding: a layer receives the keys/values of the positions it has already seen and returns
them extended, which is the key/value cache.

EKAGen's decoder layers have a third attention, to the instance-level expert knowledge of the
study (`stages.generation.ekagen`), after the attention to the image: the layer's normalised
state h and its knowledge response a are fused as out = W3[W1 h ; W2 a]. Composed linear maps
are one linear map, so the fusion is a single linear layer over [h ; a], added residually.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

KeyValues = tuple[torch.Tensor, torch.Tensor]


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(n,) integer positions -> (n, dim) sine (even columns) / cosine (odd columns) codes."""
    rates = torch.exp(torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)
                      * (-math.log(10000.0) / dim))
    angles = positions.to(torch.float32)[:, None] * rates[None]
    codes = torch.zeros(len(positions), dim, device=positions.device)
    codes[:, 0::2] = torch.sin(angles)
    codes[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return codes


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, n, d) -> (B, heads, n, d / heads)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, n, d / heads) -> (B, n, d)."""
    return x.transpose(1, 2).flatten(2)


class Attention(nn.Module):
    """Multi-head scaled dot-product attention whose keys/values are computed separately, so
    they can be cached (decoder self-attention) or computed once (memory of the cross-attention)."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def keys_values(self, source: torch.Tensor) -> KeyValues:
        keys, values = self.key_value(source).chunk(2, dim=-1)
        return split_heads(keys, self.heads), split_heads(values, self.heads)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """`mask` broadcasts to (B, heads, n, S); True where a query may attend a key."""
        queries = split_heads(self.query(x), self.heads)
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out(merge_heads(out))


def feed_forward(d_model: int, d_ff: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.norm_attn, self.norm_ff = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, heads, dropout)
        self.ff = feed_forward(d_model, d_ff, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm_attn(x)
        x = x + self.drop(self.attn(h, *self.attn.keys_values(h), mask))
        return x + self.drop(self.ff(self.norm_ff(x)))


class Knowledge(NamedTuple):
    """What a decoder layer's knowledge attention reads: per-layer keys/values of the knowledge
    tokens and a (B, S) mask of the slots each study may attend."""

    keys_values: list[KeyValues]
    mask: torch.Tensor


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float, knowledge: bool = False):
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_ff = (nn.LayerNorm(d_model) for _ in range(3))
        self.self_attn = Attention(d_model, heads, dropout)
        self.cross_attn = Attention(d_model, heads, dropout)
        if knowledge:
            self.norm_know = nn.LayerNorm(d_model)
            self.know_attn = Attention(d_model, heads, dropout)
            self.fuse = nn.Linear(2 * d_model, d_model)
        self.ff = feed_forward(d_model, d_ff, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, past: KeyValues | None, memory: KeyValues,
                memory_mask: torch.Tensor, knowledge: tuple[KeyValues, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, KeyValues]:
        """x: the n newest positions; past: keys/values of the positions before them; knowledge:
        this layer's knowledge keys/values and a mask broadcasting to (B, heads, n, S)."""
        h = self.norm_self(x)
        keys, values = self.self_attn.keys_values(h)
        if past is not None:
            keys, values = torch.cat([past[0], keys], dim=2), torch.cat([past[1], values], dim=2)
        n, total = x.shape[1], keys.shape[2]
        causal = torch.ones(n, total, dtype=torch.bool, device=x.device).tril(total - n)
        x = x + self.drop(self.self_attn(h, keys, values, causal))
        x = x + self.drop(self.cross_attn(self.norm_cross(x), *memory, memory_mask))
        if knowledge is not None:
            h = self.norm_know(x)
            x = x + self.drop(self.fuse(torch.cat([h, self.know_attn(h, *knowledge[0], knowledge[1])], dim=-1)))
        return x + self.drop(self.ff(self.norm_ff(x))), (keys, values)


class Encoder(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, heads, d_ff, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, d), mask (B, L) bool of real tokens."""
        attend = mask[:, None, None, :]
        for layer in self.layers:
            x = layer(x, attend)
        return self.norm(x)


class Decoder(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float, layers: int, knowledge: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d_model, heads, d_ff, dropout, knowledge) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)

    def memory(self, memory: torch.Tensor) -> list[KeyValues]:
        """Each layer's cross-attention keys/values of the encoder output (computed once per study)."""
        return [layer.cross_attn.keys_values(memory) for layer in self.layers]

    def knowledge(self, tokens: torch.Tensor, mask: torch.Tensor) -> Knowledge:
        """Each layer's knowledge-attention keys/values of (1 or B, S, d) tokens; mask (B, S) bool."""
        batch = mask.shape[0]
        pairs = [layer.know_attn.keys_values(tokens) for layer in self.layers]
        return Knowledge([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in pairs], mask)

    def forward(self, x: torch.Tensor, past: list[KeyValues] | None, memory: list[KeyValues],
                memory_mask: torch.Tensor, knowledge: Knowledge | None = None) -> tuple[torch.Tensor, list[KeyValues]]:
        """Decode the n newest positions given each layer's cached keys/values (None: none yet)."""
        attend = memory_mask[:, None, None, :]
        know_mask = None if knowledge is None else knowledge.mask[:, None, None, :]
        cache = []
        for i, layer in enumerate(self.layers):
            know = None if knowledge is None else (knowledge.keys_values[i], know_mask)
            x, kv = layer(x, None if past is None else past[i], memory[i], attend, know)
            cache.append(kv)
        return self.norm(x), cache
