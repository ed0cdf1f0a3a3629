"""What `train --model warmstart` needs besides the shared run: the decoder, its tokenizer and its targets.

The targets are the cleaned reports dataset.h5 stores, cut as R2Gen's stored ids cut them
(max_length - 1 words) and then to `max_tokens` of the decoder's sub-words (the reference's
decoder_max_len; BOS included), so the model learns exactly the text it is scored against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stages.core.artifacts import read_manifest
from stages.generation.config import GeneratorConfig
from stages.text.subword import SubwordTokenizer, r2gen_span
from stages.training.model import ReportModel, VisualSpec, build_model


@dataclass
class WarmStart:
    folder: Path                              # where the decoder (and its tokenizer) came from
    tokenizer: SubwordTokenizer
    generator: dict[str, Any]                 # GeneratorConfig fields the decoder fixes
    targets: tuple[np.ndarray, np.ndarray]    # (n, max_tokens) ids and (n,) lengths, one row per study
    settings: dict[str, Any]                  # how the targets were made, for the run's records


def prepare(dataset_h5: Path, decoder: str, max_tokens: int) -> WarmStart:
    """The decoder named by `decoder` ("minilm" or a folder) and every study's targets in its
    tokenizer. ValueError naming the fix when the decoder or its tokenizer cannot serve."""
    from stages.generation.warmstart import decoder_config, decoder_folder, decoder_size  # loads transformers

    if max_tokens < 2:
        raise ValueError(f"--max-tokens must leave room for BOS and one token, got {max_tokens}")
    folder = decoder_folder(decoder)
    values = decoder_config(folder)
    hidden, vocab_size = decoder_size(values)
    style = (read_manifest(dataset_h5) or {}).get("options", {}).get("clean_style")
    if style is None:
        raise ValueError(f"{dataset_h5}'s manifest does not record clean_style; rebuild it with rrg-stage preprocess "
                         "--force")
    tokenizer = SubwordTokenizer.from_folder(folder, style)
    if len(tokenizer) > vocab_size:
        raise ValueError(f"the tokenizer in {folder} has {len(tokenizer)} tokens but the decoder's embeddings hold "
                         f"{vocab_size}; the folder's model and tokenizer do not belong together")
    targets, r2gen_length = subword_targets(dataset_h5, tokenizer, max_tokens)
    generator = {"vocab_size": vocab_size, "d_model": hidden, "max_length": max_tokens, "decoder_config": values,
                 "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id}
    ids, lengths = targets
    settings = {"r2gen_words": r2gen_length - 1, "max_tokens": max_tokens,
                "reports_cut_by_max_tokens": int(((lengths == max_tokens) & (ids[:, -1] != tokenizer.eos_id)).sum())}
    return WarmStart(folder, tokenizer, generator, targets, settings)


def subword_targets(dataset_h5: Path, tokenizer: SubwordTokenizer, max_tokens: int
                    ) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    """Every study's target ids and lengths in `tokenizer`, and the R2Gen id length they were cut to."""
    with h5py.File(dataset_h5, "r") as h5:
        cleaned = h5["studies/clean"].asstr()[:]
        r2gen_length = int(h5["studies/token_ids"].shape[1])
    return tokenizer.encode_batch([r2gen_span(text, r2gen_length) for text in cleaned], max_tokens), r2gen_length


def _parts(groups: list[str]) -> list[str]:
    """Module names of parameter groups, cross-attention named once."""
    return sorted({"cross-attention (every layer)" if "cross" in group else group.rsplit(".", 1)[0]
                   for group in groups})


def build_warmstart(warm: WarmStart, config: GeneratorConfig, spec: VisualSpec, init: str
                    ) -> tuple[ReportModel, dict[str, Any]]:
    """The model with its decoder's pretrained weights (init "pretrained") or re-initialised
    ("random"), and a record of where every part's weights came from (run.json keeps it)."""
    model = build_model(config, spec, decoder_weights=warm.folder if init == "pretrained" else None)
    starts = warm.tokenizer.word_starts()
    model.generator.word_start[:len(starts)] = starts
    model.generator.banned.copy_(warm.tokenizer.banned(config.vocab_size))
    weights = spec.weights or "its built-in ImageNet weights"
    encoder = (f"{spec.encoder} tokens from features.h5 ({weights}), frozen" if spec.mode == "cached"
               else f"{spec.encoder} ({weights}), trained end to end")
    loaded = model.generator.loaded
    if loaded is None:
        size = sum(p.numel() for p in model.generator.decoder.parameters())
        decoder: dict[str, Any] = {"folder": None, "architecture_of": str(warm.folder), "parameters": size}
        summary = (f"init random: the decoder ({size / 1e6:.1f}M parameters, the architecture of {warm.folder}) "
                   f"starts from transformers' initialisation; image encoder: {encoder}")
    else:
        decoder = {**loaded, "new_parts": _parts(loaded["new"])}
        summary = (f"warm start from {warm.folder}: {loaded['loaded_parameters'] / 1e6:.1f}M decoder parameters "
                   f"loaded, {loaded['new_parameters'] / 1e6:.1f}M new ({', '.join(decoder['new_parts'])})"
                   + (f", unused: {', '.join(_parts(loaded['unused']))}" if loaded["unused"] else "")
                   + f"; image encoder: {encoder}")
    return model, {"decoder": decoder, "encoder": encoder, "summary": summary}
