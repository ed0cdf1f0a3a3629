"""The vision module: a prompt-conditioned diffusion model, its resumable training and guided sampling.

Training draws, per step, a batch of training images, a reference image for each (prompts.py),
a timestep, noise, and which samples lose their prompt (classifier-free guidance's condition
dropout: the prompt is replaced by learned null embeddings, the view is kept). All of it comes
from generators seeded by (seed, step), so a run resumed from last.pt takes exactly the steps an
uninterrupted run would; and since the learning rate is constant after its warm-up, a run given
more --steps continues from its last.pt and trains exactly the weights of the longer run. The
weights kept are an exponential moving average (EMA) of the trained ones, which is what diffusion
models sample with: by default those of the checkpoint with the lowest validation denoising loss,
so that a step budget past the point where a small dataset is overfitted costs time, not quality.

A run directory holds last.pt (weights, EMA, the best EMA so far, optimizer, step), log.jsonl
(training windows and validation denoising losses), curves.png and, at the end, vision.pt (the kept
EMA weights, the configuration and what the prompts were made of).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from stages.core.artifacts import load_torch, save_figure
from stages.core.checkpoints import load_checkpoint, save_checkpoint
from stages.synthesis.prompts import PROMPTS, PromptBank, Prompts, to_resolution
from stages.synthesis.schedule import SCHEDULES, TARGETS, NoiseSchedule
from stages.synthesis.unet import UNet


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in str(text).split(",") if v.strip())


@dataclass
class VisionConfig:
    """The model: U-Net size, noise schedule, prompt. The last three fields come from the data."""

    resolution: int = 64
    width: int = 32
    mults: str = "1,2,2,4"
    res_blocks: int = 1
    attention: str = "8"
    heads: int = 4
    dropout: float = 0.0
    schedule: str = "cosine"
    timesteps: int = 1000
    target: str = "eps"
    prompt: str = "text+image"
    cond_dropout: float = 0.1
    text_dim: int = 384
    image_dim: int = 1280
    views: int = 2

    def validate(self) -> None:
        if self.prompt not in PROMPTS:
            raise ValueError(f"--prompt must be one of {', '.join(PROMPTS)}, not {self.prompt!r}")
        if self.schedule not in SCHEDULES or self.target not in TARGETS:
            raise ValueError(f"--schedule must be one of {SCHEDULES} and --target one of {TARGETS}")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError("--cond-dropout must be in [0, 1)")
        levels = len(_ints(self.mults))
        if not levels or self.resolution % 2 ** (levels - 1):
            raise ValueError(f"--resolution {self.resolution} must be divisible by 2^(levels-1) for --mults {self.mults}")
        if self.width % 8 or self.width % self.heads:
            raise ValueError("--width must be a multiple of 8 and of --heads")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class VisionModel(nn.Module):
    """U-Net + the prompt encoder: text and image embeddings projected and summed with the view's."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.unet = UNet(config.resolution, config.width, _ints(config.mults), config.res_blocks,
                         _ints(config.attention), config.heads, config.dropout)
        emb = self.unet.emb_dim
        self.text_proj = nn.Sequential(nn.Linear(config.text_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.image_proj = nn.Sequential(nn.Linear(config.image_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.null_text = nn.Parameter(torch.zeros(emb))
        self.null_image = nn.Parameter(torch.zeros(emb))
        self.view_emb = nn.Embedding(config.views, emb)
        self.schedule = NoiseSchedule(config.schedule, config.timesteps, config.target)
        for name, dim in (("text", config.text_dim), ("image", config.image_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))

    def standardise_prompts(self, text: np.ndarray, image: np.ndarray) -> None:
        """Centre and scale each prompt dimension by the training prompts' statistics (kept in the
        weights). Reports' MiniLM embeddings and the phantoms' pooled features share a large common
        component: unstandardised, the projected prompts' spread across samples was about 1/150 of
        the conditioning vector's norm, and the demo model learnt to ignore them (a shuffled prompt
        left the validation loss unchanged to 4 digits)."""
        for name, values in (("text", text), ("image", image)):
            values = torch.from_numpy(np.asarray(values, dtype=np.float32))
            getattr(self, f"{name}_mean").copy_(values.mean(0))
            getattr(self, f"{name}_std").copy_(values.std(0).clamp(min=1e-6))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def condition(self, prompts: Prompts, keep: torch.Tensor) -> torch.Tensor:
        """(B, emb) conditioning vectors; where `keep` is False only the view is given."""
        keep = keep[:, None]
        text = self.null_text.expand(len(keep), -1)
        image = self.null_image.expand(len(keep), -1)
        if self.config.prompt in ("text+image", "text"):
            text = torch.where(keep, self.text_proj((prompts.text - self.text_mean) / self.text_std), text)
        if self.config.prompt in ("text+image", "image"):
            image = torch.where(keep, self.image_proj((prompts.image - self.image_mean) / self.image_std), image)
        return text + image + self.view_emb(prompts.view)

    def loss(self, x0: torch.Tensor, prompts: Prompts, generator: torch.Generator,
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """The denoising loss: MSE between the network's output and the schedule's target, each
        pixel's squared error multiplied by `weight` (B, 1, R, R) when given."""
        b = len(x0)
        t = torch.randint(0, self.config.timesteps, (b,), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        dropout = self.config.cond_dropout if self.training else 0.0  # validation: always the prompt
        keep = (torch.rand(b, generator=generator) >= dropout).to(x0.device)
        x_t = self.schedule.q_sample(x0, t, noise)
        output = self.unet(x_t, t, self.condition(prompts, keep))
        error = (output - self.schedule.training_target(x0, t, noise)).pow(2)
        return (error if weight is None else error * weight).mean()


@torch.no_grad()
def sample(model: VisionModel, prompts: Prompts, *, guidance: float, steps: int, seed: int, batch_size: int = 32,
           desc: str = "sampling") -> torch.Tensor:
    """(n, 1, R, R) images in [-1, 1] by DDIM with classifier-free guidance
    (out = out_uncond + guidance * (out_cond - out_uncond)). The starting noise of all n images is
    drawn at once from `seed`, so an image depends on its seed and prompt, not on the batching."""
    model.eval()
    device, resolution = model.device, model.config.resolution
    noise = torch.randn((len(prompts.view), 1, resolution, resolution), generator=torch.Generator().manual_seed(seed))
    out = []
    bar = tqdm(total=len(noise) * steps, desc=desc, unit="img-step", leave=False)
    for start in range(0, len(noise), batch_size):
        part = Prompts(*(v[start:start + batch_size] for v in (prompts.text, prompts.image, prompts.view))).to(device)
        n = len(part.view)
        cond = torch.cat([model.condition(part, torch.ones(n, dtype=torch.bool, device=device)),
                          model.condition(part, torch.zeros(n, dtype=torch.bool, device=device))])

        def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            both = model.unet(torch.cat([x, x]), torch.cat([t, t]), cond)
            conditional, unconditional = both.chunk(2)
            return unconditional + guidance * (conditional - unconditional)

        out.append(model.schedule.ddim_sample(predict, noise[start:start + n].to(device), steps,
                                              progress=lambda k: bar.update(k * n)).cpu())
    bar.close()
    return torch.cat(out) if out else noise


def save_vision(path: Path, model: VisionModel, weights: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    torch.save({"config": model.config.to_dict(), "model": weights, "info": info}, path)


def load_vision(path: Path, device: str = "cpu") -> tuple[VisionModel, dict[str, Any]]:
    """A trained vision module and its info; errors name the file and the command that makes it."""
    fix = "; train it with: rrg-stage synthesize train-vision --dataset DATASET"
    saved = load_torch(path, "vision module", fix)
    if not isinstance(saved, dict) or not {"config", "model", "info"} <= set(saved):
        raise ValueError(f"{path} is not a vision module written by synthesize train-vision{fix}")
    try:
        model = VisionModel(VisionConfig(**saved["config"]))
        model.load_state_dict(saved["model"])
    except (TypeError, RuntimeError, ValueError) as error:
        raise ValueError(f"{path} does not match this version's vision module ({error}){fix} --force") from None
    return model.to(device).eval(), saved["info"]


# which EMA weights vision.pt keeps: those of the lowest validation loss, or the final ones
KEEP = ("best", "last")
# the key path, in a run's header options (synthesize train-vision's), of the one option a finished
# run may be continued to a larger value of (checkpoints.extends)
RUN_LENGTH = ("train", "steps")


@dataclass
class VisionOptions:
    """Optimisation options (recorded in the run)."""

    steps: int = 4000
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 200
    log_every: int = 50
    balance: float = 0.0
    finding_weight: float = 0.0
    keep: str = "best"
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("--steps, --batch-size, --checkpoint-every and --log-every must be at least 1")
        if self.balance < 0 or self.finding_weight < 0:
            raise ValueError("--balance and --finding-weight must not be negative")
        if self.keep not in KEEP:
            raise ValueError(f"--keep must be one of {', '.join(KEEP)}, not {self.keep!r}")


def balanced_weights(labels: np.ndarray, power: float) -> np.ndarray:
    """Sampling probability of each training image: (images / images sharing its rarest positive
    finding) ** power, so that rare signs are seen more often (power 0: uniform; images without a
    positive label count as the commonest)."""
    counts = labels.sum(0).astype(np.float64)
    rarest = np.where(labels > 0, counts[None, :], np.inf).min(1)
    rarest = np.where(np.isfinite(rarest), rarest, counts.max(initial=1.0))
    weights = (len(labels) / np.maximum(rarest, 1.0)) ** power
    return weights / weights.sum()


def finding_weights(masks: np.ndarray, resolution: int, weight: float) -> torch.Tensor:
    """(n, 1, R, R) per-pixel loss weights 1 + weight * (the share of the pixel that a finding mask
    covers). A finding is a few percent of an image and a rare finding a few percent of the images,
    so under the plain loss the denoiser can leave it out at little cost; this makes it count."""
    covered = F.interpolate(torch.from_numpy(np.asarray(masks, dtype=np.float32))[:, None],
                            size=(resolution, resolution), mode="area")
    return 1.0 + weight * covered


class VisionTrainer:
    """Trains a VisionModel on the training images of a PromptBank into `run_dir`, resuming last.pt.
    `masks` (the training images' finding masks, adm.h5) is needed for --finding-weight."""

    def __init__(self, model: VisionModel, bank: PromptBank, options: VisionOptions, run_dir: Path,
                 header: dict[str, Any], log: Any = tqdm.write, masks: np.ndarray | None = None):
        options.validate()
        self.model, self.bank, self.options, self.run_dir, self.header, self.log = (
            model, bank, options, run_dir, header, log)
        self.train_rows, self.val_rows = bank.image_rows("train"), bank.image_rows("val")
        resolution = model.config.resolution
        self.train_images = to_resolution(bank.pixels(self.train_rows), resolution)
        self.val_images = to_resolution(bank.pixels(self.val_rows), resolution)
        model.standardise_prompts(bank.text[np.unique(bank.image_study[self.train_rows])], bank.image[self.train_rows])
        self.weights = (balanced_weights(bank.labels[bank.image_study[self.train_rows]], options.balance)
                        if options.balance > 0 else None)
        if options.finding_weight > 0 and masks is None:
            raise ValueError("--finding-weight needs the training images' finding masks (adm.h5)")
        self.pixel_weights = (finding_weights(masks, resolution, options.finding_weight)
                              if options.finding_weight > 0 else None)
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.best_ema: dict[str, torch.Tensor] | None = None
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        warmup = max(1, options.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup))
        self.state: dict[str, Any] = {"step": 0, "validation": []}

    def indices(self, step: int) -> np.ndarray:
        """Positions in `train_rows` of step `step`'s images: each image once per epoch, or drawn
        by `balanced_weights` with --balance (either way a function of seed and step)."""
        b, n, seed = self.options.batch_size, len(self.train_rows), self.options.seed
        if self.weights is not None:
            return np.random.default_rng([seed, step, 3]).choice(n, b, p=self.weights)
        positions = step * b + np.arange(b)
        epochs = positions // n
        index = np.empty(b, dtype=np.int64)
        for epoch in np.unique(epochs):
            order = np.random.default_rng([seed, int(epoch)]).permutation(n)
            index[epochs == epoch] = order[positions[epochs == epoch] % n]
        return index

    def _batch(self, step: int) -> tuple[torch.Tensor, Prompts, torch.Generator, torch.Tensor | None]:
        """The images, prompts, random generator and loss weights (None: plain loss) of training
        step `step` (a function of seed and step)."""
        seed = self.options.seed
        index = self.indices(step)
        rows = self.train_rows[index]
        studies = self.bank.image_study[rows]
        references = self.bank.references(self.bank.labels[studies], self.bank.view[rows], studies,
                                          np.random.default_rng([seed, step, 1]))
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        weights = None if self.pixel_weights is None else self.pixel_weights[index]
        return self.train_images[index], self.bank.prompts(studies, references, self.bank.view[rows]), generator, weights

    @torch.no_grad()
    def validation_loss(self, weights: dict[str, torch.Tensor], draws: int = 4) -> float:
        """Mean denoising loss on the validation images with fixed references, timesteps and noise
        (always the plain loss, so runs with and without --finding-weight compare)."""
        if not len(self.val_rows):
            return math.nan
        current = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(weights)
        self.model.eval()
        studies = self.bank.image_study[self.val_rows]
        references = self.bank.references(self.bank.labels[studies], self.bank.view[self.val_rows], studies,
                                          np.random.default_rng([self.options.seed, 2, 0]))
        prompts = self.bank.prompts(studies, references, self.bank.view[self.val_rows])
        total, count = 0.0, 0
        for draw in range(draws):
            generator = torch.Generator().manual_seed(10_007 * (draw + 1))
            for start in range(0, len(self.val_rows), 64):
                part = Prompts(*(v[start:start + 64] for v in (prompts.text, prompts.image, prompts.view)))
                x0 = self.val_images[start:start + 64].to(self.model.device)
                total += float(self.model.loss(x0, part.to(self.model.device), generator)) * len(x0)
                count += len(x0)
        self.model.load_state_dict(current)
        self.model.train()
        return total / count

    def _checkpoint(self) -> dict[str, Any]:
        return {"header": self.header, "model": self.model.state_dict(), "ema": self.ema, "best_ema": self.best_ema,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "state": self.state}

    def resume(self) -> None:
        saved = load_checkpoint(self.run_dir / "last.pt", self.header, self.model.device, "vision run", RUN_LENGTH)
        if saved is None:
            (self.run_dir / "log.jsonl").unlink(missing_ok=True)  # left by a run that never reached a checkpoint
            return
        self.model.load_state_dict(saved["model"])
        self.ema, self.best_ema = saved["ema"], saved["best_ema"]
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = saved["state"]
        log = self.run_dir / "log.jsonl"
        if log.exists():  # records written after the checkpoint will be written again
            kept = [line for line in log.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= self.state["step"]]
            log.write_text("".join(line + "\n" for line in kept))
        if saved["header"] != self.header:  # a run of fewer steps (checkpoints.extends)
            shorter = functools.reduce(dict.get, RUN_LENGTH, saved["header"]["options"])
            self.log(f"training the {shorter}-step run on from step {self.state['step']} to {self.options.steps}")
        else:
            self.log(f"resuming at step {self.state['step']} of {self.options.steps}")

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def fit(self) -> dict[str, Any]:
        """Train to `steps`; returns the state (step, validation history, seconds per step)."""
        options = self.options
        self.resume()
        self.model.train()
        window: list[float] = []
        started = time.perf_counter()
        bar = tqdm(range(self.state["step"], options.steps), desc="train-vision", unit="step",
                   initial=self.state["step"], total=options.steps)
        for step in bar:
            images, prompts, generator, weights = self._batch(step)
            loss = self.model.loss(images.to(self.model.device), prompts.to(self.model.device), generator,
                                   None if weights is None else weights.to(self.model.device))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                  options.grad_clip if options.grad_clip > 0 else math.inf)
            self.optimizer.step()
            self.scheduler.step()
            decay = min(options.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for key, value in self.model.state_dict().items():
                    if value.dtype.is_floating_point:
                        self.ema[key].mul_(decay).add_(value.detach(), alpha=1 - decay)
                    else:
                        self.ema[key].copy_(value)
            window.append(loss.item())
            self.state["step"] = step + 1
            bar.set_postfix(loss=f"{np.mean(window[-50:]):.4f}")
            if self.state["step"] % options.log_every == 0 or self.state["step"] == options.steps:
                seconds = (time.perf_counter() - started) / len(window)
                self.state.setdefault("seconds_per_step", []).append(seconds)
                self._log({"event": "train", "step": self.state["step"], "loss": float(np.mean(window)),
                           "grad_norm": float(norm), "lr": self.optimizer.param_groups[0]["lr"],
                           "seconds_per_step": seconds})
                window, started = [], time.perf_counter()
            if self.state["step"] % options.checkpoint_every == 0 or self.state["step"] == options.steps:
                record = {"event": "validation", "step": self.state["step"], "val_loss": self.validation_loss(self.ema)}
                self.state["validation"].append(record)
                best = self.state.get("best")
                if not math.isnan(record["val_loss"]) and (best is None or record["val_loss"] < best["val_loss"]):
                    self.state["best"] = record
                    self.best_ema = {k: v.clone() for k, v in self.ema.items()}
                self._log(record)
                bar.write(f"train-vision step {record['step']}: validation denoising loss (EMA) {record['val_loss']:.4f}")
                save_checkpoint(self.run_dir / "last.pt", self._checkpoint())
                plot_curves(self.run_dir / "log.jsonl", self.run_dir / "curves.png")
                started = time.perf_counter()  # the validation is not training time
        bar.close()
        return self.state

    def kept(self) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
        """The EMA weights vision.pt keeps and their validation record (None: the last, unvalidated)."""
        if self.options.keep == "best" and self.best_ema is not None:
            return self.best_ema, self.state["best"]
        validation = self.state["validation"]
        return self.ema, validation[-1] if validation and validation[-1]["step"] == self.state["step"] else None


def plot_curves(log_jsonl: Path, path: Path) -> None:
    """Training loss per logged window and the EMA weights' validation denoising loss, per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in log_jsonl.read_text().splitlines() if line.strip()]
    train = [r for r in records if r["event"] == "train"]
    val = [r for r in records if r["event"] == "validation"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="training loss (window mean)")
    ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], marker="o", label="validation loss (EMA weights)")
    if val and not all(math.isnan(r["val_loss"]) for r in val):
        best = min((r for r in val if not math.isnan(r["val_loss"])), key=lambda r: r["val_loss"])
        ax.axvline(best["step"], color="grey", linestyle=":", label=f"lowest validation loss (step {best['step']})")
    ax.set(xlabel="step", ylabel="denoising MSE", yscale="log", title="vision module")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
