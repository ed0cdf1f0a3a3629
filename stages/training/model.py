"""A trained report generator as one object: visual front end + generator + vocabulary + how it was built.

`model.pt` (written by `train`) is self-contained: the generator's config and weights, the
vocabulary (for the warm-started model, its decoder's tokenizer files), the visual mode (cached
patch tokens from a named image encoder, or the encoder trained end to end), the image size it
expects, whether images are ADM-enhanced first (EKAGen) and how its conditioning labels are obtained.
`generate` and `evaluate` rebuild everything from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stages.core.artifacts import load_torch
from stages.generation.config import GeneratorConfig
from stages.generation.decoding import Decoding, beam_search, greedy, mbr
from stages.generation.models import GeneratorOutput, build_generator
from stages.generation.visual import VisualExtractor, cached_tokens
from stages.models.image_encoders import build_image_encoder
from stages.text.subword import SubwordTokenizer
from stages.text.vocab import Vocabulary
from stages.training.data import Batch

# version 2: XProNet's prototype projection gained a LayerNorm. Runs record it among their options,
# so that a run trained by an older version is trained again rather than failing to load
FORMAT = "rrg-report-model/2"
# what turns a model's token ids into report text: R2Gen's word vocabulary, or a pretrained
# decoder's own sub-word tokenizer (warmstart)
TextCodec = Vocabulary | SubwordTokenizer


@dataclass
class VisualSpec:
    """How images become visual tokens; recorded so inference repeats it exactly."""

    mode: str                 # "cached" (tokens from features.h5's encoder) or "end-to-end"
    encoder: str              # image encoder name
    weights: str | None       # its weights file (None: the encoder's built-in default)
    input_size: int           # side fed to the encoder
    image_size: int           # side of the stored images (dataset.h5)
    max_views: int = 2
    extra: dict[str, Any] = field(default_factory=dict)
    # ADM enhancement of every input image (EKAGen): {"theta", "background"} of the rule, and the
    # mask settings ("cam_threshold", "dilation") that `generate` needs to make masks for new images
    adm: dict[str, float] | None = None


class ReportModel(nn.Module):
    """The generator behind its visual front end (an encoder end to end, or cached tokens)."""

    def __init__(self, generator: nn.Module, visual: VisualSpec, extractor: VisualExtractor | None = None):
        super().__init__()
        self.generator, self.visual, self.extractor = generator, visual, extractor

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def visual_parameters(self) -> list[nn.Parameter]:
        return list(self.extractor.parameters()) if self.extractor is not None else []

    def tokens(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.extractor is None:
            return cached_tokens(batch.views, batch.view_mask)
        return self.extractor(batch.views, batch.view_mask)

    def forward(self, batch: Batch) -> GeneratorOutput:
        visual, mask = self.tokens(batch)
        return self.generator(visual, mask, batch.targets, batch.target_mask, batch.labels)

    @torch.no_grad()
    def generate(self, batch: Batch, decoding: Decoding | None = None,
                 generator: torch.Generator | None = None) -> list[list[int]]:
        """Token ids (without BOS, up to EOS) per study, decoded as `decoding` says (default: beam 3):
        beam search, greedy for beam 1, or MBR over sampled reports drawn from `generator`."""
        decoding = decoding or Decoding()
        self.eval()
        visual, mask = self.tokens(batch)
        config = self.generator.config
        max_length = decoding.max_length or config.max_length
        special = {"bos": config.bos_id, "eos": config.eos_id}
        if decoding.mbr_samples > 0:
            return mbr(self.generator, visual, mask, batch.labels, decoding.mbr_samples, max_length,
                       temperature=decoding.mbr_temperature, generator=generator, **special)
        if decoding.beam_size <= 1:
            return greedy(self.generator, visual, mask, batch.labels, max_length, **special)
        return beam_search(self.generator, visual, mask, batch.labels, beam_size=decoding.beam_size,
                           max_length=max_length, length_penalty=decoding.length_penalty,
                           word_start=self.generator.word_start, **special)


def build_model(config: GeneratorConfig, visual: VisualSpec, prototypes: np.ndarray | None = None,
                knowledge: np.ndarray | None = None, encoder_weights: str | None = None,
                decoder_weights: Path | None = None) -> ReportModel:
    """`encoder_weights` overrides `visual.weights` (e.g. "random" when a checkpoint will be loaded);
    `decoder_weights` is the folder a warm-started decoder starts from (None: initialised)."""
    extractor = None
    if visual.mode == "end-to-end":
        extractor = VisualExtractor(build_image_encoder(visual.encoder, encoder_weights or visual.weights),
                                    visual.max_views)
    return ReportModel(build_generator(config, prototypes, knowledge, decoder_weights), visual, extractor)


@dataclass
class SavedModel:
    model: ReportModel
    vocab: TextCodec
    config: GeneratorConfig
    info: dict[str, Any]


def save_model(path: Path, model: ReportModel, vocab: TextCodec, config: GeneratorConfig,
               state_dict: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """model.pt: plain tensors and Python values (loadable with weights_only=True)."""
    text = {"tokenizer": vocab.state()} if isinstance(vocab, SubwordTokenizer) else {"vocab": list(vocab.tokens)}
    torch.save({"format": FORMAT, "config": config.to_dict(), "visual": vars(model.visual), **text,
                "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "info": info}, path)


def load_model(path: Path, device: str = "cpu") -> SavedModel:
    """Rebuild a trained model from model.pt; ValueError with the reason for anything else."""
    saved = load_torch(path, "report model", "; train one with rrg-stage train")
    if not isinstance(saved, dict) or not str(saved.get("format", "")).startswith("rrg-report-model/"):
        raise ValueError(f"{path} is not a report model written by rrg-stage train ({FORMAT})")
    if saved["format"] != FORMAT:
        raise ValueError(f"{path} was written by another version of rrg-stage ({saved['format']}; this one reads "
                         f"{FORMAT}); train it again (rrg-stage train replaces it; make reruns it)")
    config = GeneratorConfig.from_dict(saved["config"])
    visual = VisualSpec(**saved["visual"])
    model = build_model(config, visual, encoder_weights="random")  # the trained weights follow
    model.load_state_dict(saved["state_dict"])
    text = SubwordTokenizer.from_state(saved["tokenizer"]) if "tokenizer" in saved else Vocabulary(saved["vocab"])
    return SavedModel(model.to(device).eval(), text, config, saved["info"])
