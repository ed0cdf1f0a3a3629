"""A small pixel-space U-Net for denoising: residual blocks modulated by one conditioning vector.

The timestep (sinusoidal code -> MLP) and the prompt vector are summed into one embedding that
scales and shifts every residual block's normalised activations (FiLM, as in the ADM U-Net);
self-attention runs at the resolutions named in `attention` (16 px at the demo's 64 px, where
the grid is small enough for a CPU). Widths, depth and resolution are configuration, so the same
code runs at 64 px on a CPU and wider and larger on a GPU.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def timestep_code(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal code of integer timesteps (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


class Attention(nn.Module):
    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm = _norm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        out = self.attn(tokens, tokens, tokens, need_weights=False)[0]
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """eps (or v) prediction for (B, 1, S, S) images at timesteps (B,) given embeddings (B, emb_dim)."""

    def __init__(self, resolution: int = 64, width: int = 32, mults: tuple[int, ...] = (1, 2, 2),
                 res_blocks: int = 1, attention: tuple[int, ...] = (16,), heads: int = 4, dropout: float = 0.0):
        super().__init__()
        if resolution % 2 ** (len(mults) - 1):
            raise ValueError(f"resolution {resolution} is not divisible by 2^{len(mults) - 1} (levels {mults})")
        self.emb_dim = 4 * width
        self.time = nn.Sequential(nn.Linear(width, self.emb_dim), nn.SiLU(), nn.Linear(self.emb_dim, self.emb_dim))
        self.width = width
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.down = nn.ModuleList()
        skips, channels, size = [width], width, resolution
        for level, mult in enumerate(mults):
            for _ in range(res_blocks):
                block = nn.ModuleList([ResBlock(channels, width * mult, self.emb_dim, dropout)])
                channels = width * mult
                if size in attention:
                    block.append(Attention(channels, heads))
                self.down.append(block)
                skips.append(channels)
            if level + 1 < len(mults):
                self.down.append(nn.ModuleList([nn.Conv2d(channels, channels, 3, stride=2, padding=1)]))
                skips.append(channels)
                size //= 2
        self.mid = nn.ModuleList([ResBlock(channels, channels, self.emb_dim, dropout), Attention(channels, heads),
                                  ResBlock(channels, channels, self.emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(mults))):
            for _ in range(res_blocks + 1):
                block = nn.ModuleList([ResBlock(channels + skips.pop(), width * mult, self.emb_dim, dropout)])
                channels = width * mult
                if size in attention:
                    block.append(Attention(channels, heads))
                self.up.append(block)
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(channels, channels, 3, padding=1)]))
                size *= 2
        self.head = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, 1, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def _run(self, block: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in block:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        emb = self.time(timestep_code(t, self.width)) + cond
        h = self.stem(x)
        stack = [h]
        for block in self.down:
            h = self._run(block, h, emb)
            stack.append(h)
        h = self._run(self.mid, h, emb)
        for block in self.up:
            if isinstance(block[0], ResBlock):
                h = torch.cat([h, stack.pop()], dim=1)
            h = self._run(block, h, emb)
        return self.head(h)
