"""The noise schedule of a denoising diffusion model, its training target and the DDIM sampler.

q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with abar_t the cumulative product of
(1 - beta_t). The network predicts either the noise (eps) or v = sqrt(abar) eps - sqrt(1 - abar) x_0;
both give x_0 and eps back, so one DDIM step (eta 0: deterministic) serves either. The cosine
schedule (Nichol & Dhariwal 2021) keeps more signal at middle timesteps than the linear one of
DDPM, which matters at 64 px where a linear schedule destroys the image early.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

SCHEDULES = ("cosine", "linear")
TARGETS = ("eps", "v")


class NoiseSchedule:
    """betas, alphas_cumprod and the conversions between x_0, eps, v and x_t at integer timesteps."""

    def __init__(self, kind: str = "cosine", timesteps: int = 1000, target: str = "eps"):
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {kind!r}")
        if target not in TARGETS:
            raise ValueError(f"prediction target must be one of {', '.join(TARGETS)}, not {target!r}")
        if timesteps < 2:
            raise ValueError("a schedule needs at least 2 timesteps")
        self.kind, self.timesteps, self.target = kind, timesteps, target
        if kind == "linear":  # DDPM's 1e-4 .. 2e-2 over 1000 steps, rescaled to other lengths
            scale = 1000 / timesteps
            betas = torch.linspace(scale * 1e-4, scale * 2e-2, timesteps, dtype=torch.float64)
        else:
            s = 0.008
            f = torch.cos((torch.arange(timesteps + 1, dtype=torch.float64) / timesteps + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)

    def _at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like.device)[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        abar = self._at(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output at (x_t, t): eps, or v."""
        if self.target == "eps":
            return noise
        abar = self._at(self.alphas_cumprod, t, x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0

    def split(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, eps) implied by the network's output at (x_t, t)."""
        abar = self._at(self.alphas_cumprod, t, x_t)
        if self.target == "eps":
            eps = output
            x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        else:
            x0 = abar.sqrt() * x_t - (1 - abar).sqrt() * output
            eps = (1 - abar).sqrt() * x_t + abar.sqrt() * output
        return x0, eps

    def ddim_timesteps(self, steps: int) -> list[int]:
        """`steps` evenly spaced timesteps from high to low, ending at t = 0 ("leading" spacing: with T
        = 1000 and 25 steps, 960, 920, ..., 0). t = T - 1 itself is left out: there sqrt(abar) is
        ~5e-5 under the cosine schedule, so an eps-predictor's x_0 estimate is its error times 2e4."""
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"DDIM steps must be between 1 and {self.timesteps}, not {steps}")
        return sorted({i * self.timesteps // steps for i in range(steps)}, reverse=True)

    def ddim_sample(self, predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
                    steps: int, progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """Deterministic DDIM (eta 0) from the starting noise x_T; `predict(x_t, t)` returns the
        network's output. Each x_0 estimate is clipped to the images' range [-1, 1] and the noise
        recomputed from it, so the trajectory stays consistent with a valid image."""
        x = noise
        times = self.ddim_timesteps(steps)
        for i, step in enumerate(times):
            t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
            x0 = self.split(predict(x, t), x, t)[0].clamp(-1, 1)
            abar = float(self.alphas_cumprod[step])
            abar_prev = float(self.alphas_cumprod[times[i + 1]]) if i + 1 < len(times) else 1.0
            eps = (x - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
            x = math.sqrt(abar_prev) * x0 + math.sqrt(1 - abar_prev) * eps
            if progress is not None:
                progress(1)
        return x
