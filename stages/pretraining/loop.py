"""The pretraining loop: shuffled study batches, the staged losses, validation, resuming.

A run directory holds
  last.pt     weights, optimizer, scheduler, random states and the position in the epoch; written
              every `checkpoint_every` steps and at each epoch's end
  best.pt     the trained weights of the epoch selected on validation (or the last epoch)
  log.jsonl   one line per logged training window and per epoch
  curves.png  every loss term per epoch and the validation scores
A run cut short continues from last.pt and ends bit-identical to one never interrupted: an
epoch's order and augmentation come from generators seeded by (seed, epoch), and the random
states are saved with the position.

The losses start in stages, as in the reference (which trains alignment alone, then adds the
prototype bank, then the reconstructions, each stage with its own optimiser): the bank from
epoch floor(spb_start * epochs), the reconstructions from floor(reconstruction_start * epochs);
here one optimiser and one warm-up + cosine schedule span the whole run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from stages.core.artifacts import save_figure
from stages.core.checkpoints import load_checkpoint, random_state, restore_random_state, save_checkpoint
from stages.pretraining.data import PairSource
from stages.pretraining.losses import gumbel_temperature, info_nce
from stages.pretraining.model import MAX_LOGIT_SCALE, Parts, PriorModel
from stages.pretraining.probe import embed_rows, retrieval

SELECTIONS = ("val_recall", "val_loss", "last")


@dataclass
class PretrainOptions:
    """Optimisation options (recorded in the run)."""

    epochs: int = 12
    batch_size: int = 16
    lr: float = 1e-3
    lr_encoder: float = 1e-4
    lr_text: float = 2e-5
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    grad_clip: float = 0.0
    max_rotation: float = 7.0
    min_crop_area: float = 0.75
    select: str = "val_recall"
    checkpoint_every: int = 200
    seed: int = 0

    def validate(self) -> None:
        if self.select not in SELECTIONS:
            raise ValueError(f"--select must be one of {', '.join(SELECTIONS)}, not {self.select!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("--epochs and --batch-size must be at least 1")


def stage_epoch(fraction: float, epochs: int) -> int:
    """The first epoch (0-based) of a stage that starts after `fraction` of the epochs."""
    return int(math.floor(fraction * epochs))


class PretrainLoop:
    def __init__(self, model: PriorModel, source: PairSource, options: PretrainOptions, run_dir: Path,
                 header: dict[str, Any], log: Callable[[str], None] = tqdm.write):
        options.validate()
        self.model, self.source, self.options, self.run_dir, self.header, self.log = (
            model, source, options, run_dir, header, log)
        self.train_rows, self.val_rows = source.rows("train"), source.rows("val")
        # a last batch of a single study is left out: one pair has no negative (and batch norm no statistics)
        self.steps = len(self.train_rows) // options.batch_size + (len(self.train_rows) % options.batch_size >= 2)
        self.total = self.steps * options.epochs
        towers = {id(p) for p in [*model.encoder.parameters(), *model.text.parameters()]}
        groups = [([p for p in model.encoder.parameters() if p.requires_grad], options.lr_encoder),
                  ([p for p in model.text.parameters() if p.requires_grad], options.lr_text),
                  ([p for p in model.parameters() if p.requires_grad and id(p) not in towers], options.lr)]
        self.optimizer = torch.optim.AdamW([{"params": params, "lr": lr} for params, lr in groups if params],
                                           weight_decay=options.weight_decay)
        warmup = max(1, round(options.warmup_fraction * self.total))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(self.total - warmup, 1)))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        # best_score: lower is better (the negated mean recall, the loss, or minus the epoch)
        self.state: dict[str, Any] = {"epoch": 0, "step": 0, "best_score": math.inf, "best_epoch": 0, "history": []}

    # -- schedule ----------------------------------------------------------------------------------
    def parts(self, epoch: int, step: int) -> Parts:
        """What the step `step` of epoch `epoch` (both 0-based) computes."""
        config = self.model.config
        spb_from = stage_epoch(config.spb_start, self.options.epochs)
        progress = (epoch * self.steps + step - spb_from * self.steps) / max((self.options.epochs - spb_from)
                                                                              * self.steps - 1, 1)
        return Parts(spb=epoch >= spb_from,
                     reconstruction=epoch >= stage_epoch(config.reconstruction_start, self.options.epochs),
                     temperature=gumbel_temperature(progress, config.gumbel_start, config.gumbel_end))

    # -- checkpoints -------------------------------------------------------------------------------
    def _checkpoint(self, generator: torch.Generator) -> dict[str, Any]:
        return {"header": self.header, "model": self.model.trained_state(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "state": self.state,
                "rng": random_state(generator)}

    def resume(self) -> dict[str, Any] | None:
        """Load last.pt when the same job wrote it (same header); return its random states."""
        saved = load_checkpoint(self.run_dir / "last.pt", self.header, self.model.device, "pretraining run")
        if saved is None:
            return None
        self.model.load_trained_state(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = saved["state"]
        self.log(f"resuming after epoch {self.state['epoch']}, step {self.state['step']}")
        return saved["rng"]

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        options = self.options
        rng = self.resume()
        for epoch in range(self.state["epoch"], options.epochs):
            generator = torch.Generator().manual_seed(options.seed * 1_000_003 + epoch)
            torch.manual_seed(options.seed * 1_000_003 + epoch)
            if rng is not None and self.state["step"] > 0:  # resume inside the epoch's random streams
                restore_random_state(rng, generator)
            rng = None
            self._train_epoch(epoch, generator)
            self._end_epoch(epoch, generator)
        return self.state

    def _train_epoch(self, epoch: int, generator: torch.Generator) -> None:
        options = self.options
        order = self.train_rows[np.random.default_rng([options.seed, epoch]).permutation(len(self.train_rows))]
        self.model.train()
        bar = tqdm(range(self.state["step"], self.steps), desc=f"pretrain epoch {epoch + 1}/{options.epochs}",
                   unit="step", leave=False, initial=self.state["step"], total=self.steps)
        window: list[dict[str, float]] = []
        for step in bar:
            rows = order[step * options.batch_size:(step + 1) * options.batch_size]
            started = time.perf_counter()
            batch = self.source.batch(rows, train=True, generator=generator)
            output = self.model(batch, self.parts(epoch, step))
            self.optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                  options.grad_clip if options.grad_clip > 0 else math.inf)
            self.optimizer.step()
            self.scheduler.step()
            images = int(batch.view_mask.sum())
            window.append({"loss": output.loss.item(), **{k: v.item() for k, v in output.terms.items()},
                           "grad_norm": float(norm), "images_per_s": images / (time.perf_counter() - started)})
            self.state["step"] = step + 1
            bar.set_postfix(loss=f"{np.mean([w['loss'] for w in window[-20:]]):.3f}")
            if self.state["step"] % options.checkpoint_every == 0 and self.state["step"] < self.steps:
                self._flush(epoch, window)
                window = []
                save_checkpoint(self.run_dir / "last.pt", self._checkpoint(generator))
        bar.close()
        self._flush(epoch, window)

    def _flush(self, epoch: int, window: list[dict[str, float]]) -> None:
        if window:
            keys = sorted({k for w in window for k in w})
            means = {k: float(np.mean([w[k] for w in window if k in w])) for k in keys}
            self._log({"event": "train", "epoch": epoch + 1, "step": self.state["step"], **means})
            self.state.setdefault("epoch_windows", []).append((len(window), means))

    def validate(self) -> dict[str, float]:
        """Global InfoNCE over the whole val split at the current temperature, and val retrieval."""
        embedded = embed_rows(self.model, self.source, self.val_rows, max(self.options.batch_size, 16), "validation")
        scale = float(self.model.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE))
        loss = float(info_nce(torch.from_numpy(embedded["image"]), torch.from_numpy(embedded["text"]), scale))
        reports = [" . ".join(self.source.sentences[r]) for r in self.val_rows]
        found = retrieval(embedded["image"], embedded["text"], reports)
        return {"val_loss": loss, **{f"val_{k}": found[k] for k in ("recall@1", "recall@5", "recall@10")},
                "temperature": 1 / scale}

    def _end_epoch(self, epoch: int, generator: torch.Generator) -> None:
        options = self.options
        windows = self.state.pop("epoch_windows", [])
        record: dict[str, Any] = {"event": "epoch", "epoch": epoch + 1, "lr": self.optimizer.param_groups[-1]["lr"]}
        for key in sorted({k for _, means in windows for k in means}):
            weighted = [(n, means[key]) for n, means in windows if key in means]
            record[f"train_{key}"] = sum(n * v for n, v in weighted) / sum(n for n, _ in weighted)
        parts = self.parts(epoch, self.steps - 1)
        record.update(spb=parts.spb, reconstruction=parts.reconstruction, gumbel_temperature=parts.temperature)
        started = time.time()
        record.update(self.validate())
        record["val_seconds"] = round(time.time() - started, 1)
        record["val_recall"] = float(np.mean([record[f"val_recall@{k}"] for k in (1, 5, 10)]))
        score = {"val_recall": -record["val_recall"], "val_loss": record["val_loss"],
                 "last": -float(epoch)}[options.select]
        self.log(f"pretrain epoch {epoch + 1}/{options.epochs}: train loss {record.get('train_loss', math.nan):.4f}, "
                 f"val loss {record['val_loss']:.4f}, val image-to-report R@1/5/10 {record['val_recall@1']:.3f} / "
                 f"{record['val_recall@5']:.3f} / {record['val_recall@10']:.3f}"
                 + (f", bank temperature {parts.temperature:.3f}" if parts.spb and self.model.config.enabled("spb")
                    else ""))
        if score <= self.state["best_score"]:
            self.state.update(best_score=score, best_epoch=epoch + 1)
            save_checkpoint(self.run_dir / "best.pt", {"header": self.header, "model": self.model.trained_state(),
                                                       "epoch": epoch + 1, "val_loss": record["val_loss"]})
        self.state["history"].append(record)
        self.state.update(epoch=epoch + 1, step=0)
        self._log(record)
        save_checkpoint(self.run_dir / "last.pt", self._checkpoint(generator))
        plot_curves(self.state["history"], self.run_dir / "curves.png")


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Every training loss term per epoch, and the validation loss and Recall@5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    terms = sorted({k for h in history for k in h
                    if k.startswith("train_") and k not in ("train_images_per_s", "train_grad_norm")})
    for key in terms:
        left.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=key[len("train_"):])
    left.set(xlabel="epoch", ylabel="loss", title="training losses")
    left.legend(fontsize=7)
    right.plot(epochs, [h["val_loss"] for h in history], marker="o", label="val global InfoNCE")
    twin = right.twinx()
    twin.plot(epochs, [h["val_recall@5"] for h in history], marker="s", color="tab:green", label="val R@5")
    right.set(xlabel="epoch", ylabel="InfoNCE", title="validation (image-to-report)")
    twin.set_ylabel("Recall@5")
    fig.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
