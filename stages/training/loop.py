"""The training loop: epochs over shuffled studies, validation decoding, checkpoint selection, resuming.

A run directory holds
  last.pt      everything needed to continue: weights, optimizer, scheduler, RNG states, position
               in the epoch; written every `checkpoint_every` steps and at each epoch's end
  best.pt      the weights of the epoch with the best validation score (validation only)
  log.jsonl    one line per logged training window and per epoch
  curves.png   training loss and validation score per epoch
  predictions_val.csv  the best epoch's validation reports
A run cut short (killed, Ctrl-C, a lost machine) continues from last.pt and ends bit-identical to
one that was never interrupted: the epoch's permutation depends on (seed, epoch) only and the
random states are saved with the position.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from stages.core.artifacts import save_figure
from stages.core.checkpoints import load_checkpoint, random_state, restore_random_state, save_checkpoint
from stages.evaluation.clinical import binary_labels, ce_scores, load_labeler
from stages.evaluation.nlg import as_captions, bleu, cider, rouge_l
from stages.evaluation.runs import write_predictions
from stages.generation.decoding import Decoding
from stages.text.vocab import Vocabulary
from stages.training.data import StudySource
from stages.training.distributed import Dist, epoch_order
from stages.training.model import ReportModel, TextCodec

if TYPE_CHECKING:
    from stages.training.distill import Teacher


# validation metrics logged every epoch; --monitor picks the one that selects best.pt. bleu4_ce_f1 is
# the mean of BLEU-4 and CE micro-F1: on a small validation split BLEU-4 alone favours the epochs that
# write one normal report for every study, which a clinical term does not
MONITORS = ("bleu4", "bleu1", "cider", "rouge_l", "ce_f1", "bleu4_ce_f1")


def validation_scores(gts: dict[str, list[str]], res: dict[str, list[str]]) -> dict[str, float]:
    """Every monitor's score (BLEU computed once; CE micro-F1 with the rules labeler, fast enough
    for every epoch)."""
    bleus = bleu(gts, res)
    labeler = load_labeler("rules")[0]
    ids = sorted(gts)
    ce = ce_scores(binary_labels(labeler, [gts[i][0] for i in ids]), binary_labels(labeler, [res[i][0] for i in ids]))
    return {"bleu4": bleus["BLEU_4"], "bleu1": bleus["BLEU_1"], "cider": cider(gts, res),
            "rouge_l": rouge_l(gts, res), "ce_f1": ce["micro"]["f1"],
            "bleu4_ce_f1": (bleus["BLEU_4"] + ce["micro"]["f1"]) / 2}


OPTIMIZERS = ("adam", "adamw")
CLIPS = ("value", "norm")


@dataclass
class TrainOptions:
    """Optimisation and selection options (reference: R2Gen / XProNet on IU X-Ray; EKAGen's
    reference, AdamW with norm clipping, is set per model by `rrg-stage train`)."""

    epochs: int = 30
    batch_size: int = 16
    optimizer: str = "adam"
    lr_visual: float = 1e-3
    lr: float = 2e-3
    weight_decay: float = 5e-5
    step_size: int = 10
    gamma: float = 0.8
    clip: str = "value"
    grad_clip: float = 0.1
    monitor: str = "bleu4"
    val_beam_size: int = 3
    length_penalty: float = 0.0
    mbr_samples: int = 0
    mbr_temperature: float = 1.0
    checkpoint_every: int = 200
    seed: int = 0

    def decoding(self, max_length: int | None = None) -> Decoding:
        """The run's decoding: validation uses it, run.json records it for evaluate and generate."""
        return Decoding(beam_size=self.val_beam_size, max_length=max_length, batch_size=max(self.batch_size, 16),
                        length_penalty=self.length_penalty, mbr_samples=self.mbr_samples,
                        mbr_temperature=self.mbr_temperature, seed=self.seed)

    def validate(self) -> None:
        if self.monitor not in MONITORS:
            raise ValueError(f"--monitor must be one of {sorted(MONITORS)}, not {self.monitor!r}")
        if self.optimizer not in OPTIMIZERS or self.clip not in CLIPS:
            raise ValueError(f"--optimizer must be one of {OPTIMIZERS} and --clip one of {CLIPS}, not "
                             f"{self.optimizer!r} / {self.clip!r}")
        if min(self.epochs, self.batch_size, self.step_size, self.val_beam_size, self.checkpoint_every) < 1:
            raise ValueError("--epochs, --batch-size, --step-size, --val-beam-size and --checkpoint-every must be "
                             "at least 1")
        self.decoding().validate()


def decode_split(model: ReportModel, source: StudySource, rows: np.ndarray, vocab: TextCodec, decoding: Decoding,
                 desc: str = "decoding") -> dict[str, str]:
    """{study id: generated report} for the given study rows. MBR's samples come from one generator
    seeded with decoding.seed, so a split decodes the same way every time (each validation epoch
    included, without touching training's random state)."""
    out: dict[str, str] = {}
    generator = decoding.generator(model.device)
    for start in tqdm(range(0, len(rows), decoding.batch_size), desc=desc, unit="batch", leave=False):
        batch = source.batch(rows[start:start + decoding.batch_size]).to(model.device)
        ids = model.generate(batch, decoding, generator)
        out.update({source.data.ids[row]: vocab.decode(report) for row, report in zip(batch.rows, ids)})
    return out


class Trainer:
    def __init__(self, model: ReportModel, source: StudySource, vocab: Vocabulary, options: TrainOptions,
                 run_dir: Path, context: Dist, *, max_length: int, header: dict[str, Any],
                 teacher: Teacher | None = None, log: Callable[[str], None] = tqdm.write,
                 text: TextCodec | None = None):
        """`teacher`: distil from a frozen model (its loss term is added to every step's loss);
        `vocab` decodes the validation references (dataset.h5's R2Gen ids), `text` the model's
        reports when it has its own tokenizer (default: `vocab`)."""
        self.model, self.source, self.vocab, self.options, self.teacher = model, source, vocab, options, teacher
        self.text = text or vocab
        self.run_dir, self.context, self.max_length, self.header, self.log = run_dir, context, max_length, header, log
        options.validate()
        self.train_rows, self.val_rows = source.rows("train"), source.rows("val")
        visual = [p for p in model.visual_parameters() if p.requires_grad]
        ids = {id(p) for p in visual}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rest, "lr": options.lr}] + ([{"params": visual, "lr": options.lr_visual}] if visual else [])
        if options.optimizer == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, weight_decay=options.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(groups, weight_decay=options.weight_decay, amsgrad=True)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, options.step_size, options.gamma)
        self.net: torch.nn.Module = model
        if context.active:
            self.net = DistributedDataParallel(model, device_ids=[model.device] if model.device.type == "cuda" else None)
        self.state: dict[str, Any] = {"epoch": 0, "step": 0, "best_score": -math.inf, "best_epoch": 0, "history": []}

    # -- checkpoints ---------------------------------------------------------------------------
    def _checkpoint(self, generator: torch.Generator) -> dict[str, Any]:
        return {"header": self.header, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "state": self.state,
                "rng": random_state(generator)}

    def resume(self) -> dict[str, Any] | None:
        """Load last.pt when it was written by the same job (same header); return its RNG states."""
        saved = load_checkpoint(self.run_dir / "last.pt", self.header, self.model.device)
        if saved is None:
            return None
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = saved["state"]
        self.log(f"resuming after epoch {self.state['epoch']}, step {self.state['step']}")
        return saved["rng"]

    def _log(self, record: dict[str, Any]) -> None:
        if self.context.main:
            with open(self.run_dir / "log.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")

    # -- the loop --------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        options, context = self.options, self.context
        rng = self.resume()
        for epoch in range(self.state["epoch"], options.epochs):
            generator = torch.Generator().manual_seed(options.seed * 1_000_003 + epoch)
            torch.manual_seed(options.seed * 1_000_003 + epoch + context.rank)
            if rng is not None and self.state["step"] > 0:  # resume inside the epoch's random streams
                restore_random_state(rng, generator)
            rng = None
            self._train_epoch(epoch, generator)
            self.scheduler.step()
            self._end_epoch(epoch, generator)
        return self.state

    def _train_epoch(self, epoch: int, generator: torch.Generator) -> None:
        options = self.options
        order = epoch_order(self.train_rows, options.seed, epoch, self.context)
        steps = -(-len(order) // options.batch_size)
        self.net.train()
        bar = tqdm(range(self.state["step"], steps), desc=f"epoch {epoch + 1}/{options.epochs}", unit="step",
                   leave=False, disable=not self.context.main, initial=self.state["step"], total=steps)
        window: list[dict[str, float]] = []
        for step in bar:
            rows = order[step * options.batch_size:(step + 1) * options.batch_size]
            batch = self.source.batch(rows, train=True, generator=generator).to(self.model.device)
            output = self.net(batch)
            if self.teacher is not None:
                output = self.teacher.distil(output, batch)
            self.optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            if options.grad_clip > 0 and options.clip == "norm":
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), options.grad_clip)
            elif options.grad_clip > 0:
                torch.nn.utils.clip_grad_value_(self.model.parameters(), options.grad_clip)
            self.optimizer.step()
            window.append({"loss": output.loss.item(), **{k: v.item() for k, v in output.terms.items()}})
            self.state["step"] = step + 1
            bar.set_postfix(loss=f"{np.mean([w['loss'] for w in window[-20:]]):.3f}")
            if self.state["step"] % options.checkpoint_every == 0 and self.state["step"] < steps:
                self._flush(epoch, window)
                window = []
                if self.context.main:
                    save_checkpoint(self.run_dir / "last.pt", self._checkpoint(generator))
        bar.close()
        self._flush(epoch, window)

    def _flush(self, epoch: int, window: list[dict[str, float]]) -> None:
        if window:
            means = {k: self.context.mean(float(np.mean([w[k] for w in window]))) for k in window[0]}
            self._log({"event": "train", "epoch": epoch + 1, "step": self.state["step"], **means})
            self.state.setdefault("epoch_losses", []).append((len(window), means["loss"]))

    def _end_epoch(self, epoch: int, generator: torch.Generator) -> None:
        options = self.options
        losses = self.state.pop("epoch_losses", [])
        train_loss = sum(n * loss for n, loss in losses) / max(sum(n for n, _ in losses), 1)
        record: dict[str, Any] = {"event": "epoch", "epoch": epoch + 1, "train_loss": train_loss,
                                  "lr": self.optimizer.param_groups[0]["lr"]}
        if self.context.main:
            started = time.time()
            predictions = decode_split(self.model, self.source, self.val_rows, self.text,
                                       options.decoding(self.max_length), desc="validation")
            references = [self.vocab.decode(self.source.data.token_ids[r][1:]) for r in self.val_rows]
            gts, res = as_captions(references, [predictions[self.source.data.ids[r]] for r in self.val_rows])
            scores = {name: float(value) for name, value in validation_scores(gts, res).items()}
            score = scores[options.monitor]
            record.update({f"val_{name}": value for name, value in scores.items()})
            record["val_seconds"] = round(time.time() - started, 1)
            self.log(f"epoch {epoch + 1}/{options.epochs}: train loss {train_loss:.4f}, val "
                     + ", ".join(f"{name} {value:.4f}" for name, value in scores.items())
                     + f" (selecting on {options.monitor})")
            if score > self.state["best_score"]:
                self.state.update(best_score=score, best_epoch=epoch + 1)
                save_checkpoint(self.run_dir / "best.pt", {"header": self.header, "model": self.model.state_dict(),
                                                           "epoch": epoch + 1, f"val_{options.monitor}": score})
                write_predictions(self.run_dir / "predictions_val.csv", predictions)
        self.state["history"].append(record)
        self.state.update(epoch=epoch + 1, step=0)
        self._log(record)
        if self.context.main:
            save_checkpoint(self.run_dir / "last.pt", self._checkpoint(generator))
            plot_curves(self.state["history"], options.monitor, self.run_dir / "curves.png")
        self.context.barrier()


def plot_curves(history: list[dict[str, Any]], monitor: str, path: Path) -> None:
    """Training loss and validation score per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o")
    left.set(xlabel="epoch", ylabel="training loss", title="training")
    right.plot(epochs, [h.get(f"val_{monitor}", float("nan")) for h in history], marker="o", color="tab:green")
    right.set(xlabel="epoch", ylabel=monitor, title=f"validation {monitor} (selects best.pt)")
    fig.tight_layout()
    save_figure(fig, path)
