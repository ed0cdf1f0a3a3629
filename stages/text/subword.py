"""A pretrained decoder's own sub-word tokenizer over R2Gen-cleaned reports (the warm-started model).

A warm-started decoder (MiniLM's BERT, DistilGPT2, ...) keeps the vocabulary it was pretrained
with, so its targets are the R2Gen-cleaned reports that `dataset.h5` stores, cut to the words R2Gen
keeps (the first max_length - 1, as its stored ids hold them) and then to `max_tokens` sub-words
(CvT2DistilGPT2's order: R2Gen's label first, the decoder's length limit second). Generated ids
decode back to cleaned text, so `evaluate` scores them exactly like an R2Gen model's words:
lowercased and cleaned by `clean_report`; tokenizers that split punctuation into words (BERT's
WordPiece turns "left-sided" into "left - sided") get their hyphens re-attached, because cleaned
text never has a free-standing hyphen. Unlike the reference, rare words are learnt as themselves
rather than as R2Gen's "<unk>" (a sub-word decoder can spell them); the references keep "<unk>".

The tokenizer's files travel inside model.pt (`state`), so a run never needs the folder again.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import stages.compat  # noqa: F401  (before transformers)
from stages.text.clean import clean_report

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def r2gen_span(cleaned: str, max_length: int) -> str:
    """The words of a cleaned report that R2Gen's stored ids keep: BOS takes one of max_length ids."""
    return " ".join(cleaned.split()[:max_length - 1])


class SubwordTokenizer:
    """Cleaned report <-> the decoder's token ids, with the decoder's own BOS / EOS.

    BOS is the tokenizer's bos token, else its [CLS]; EOS its eos token, else its [SEP] (BERT
    style); padding its pad token, else EOS (padding is always masked).
    """

    def __init__(self, tokenizer: Any, clean_style: str, files: dict[str, bytes]):
        self.tokenizer, self.clean_style, self.files = tokenizer, clean_style, files
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if bos is None or eos is None:
            raise ValueError(f"the {type(tokenizer).__name__} tokenizer has neither bos/eos nor [CLS]/[SEP] tokens; "
                             "a decoder needs a start and an end token")
        self.bos_id, self.eos_id = int(bos), int(eos)
        self.pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else self.eos_id
        self.joins_hyphens = self._plain("a-b") != "a-b"

    @classmethod
    def from_folder(cls, folder: Path, clean_style: str) -> "SubwordTokenizer":
        """The tokenizer saved in a Hugging Face model folder."""
        from transformers import AutoTokenizer

        fix = "a decoder folder needs its tokenizer files (tokenizer.json or vocab files), as save_pretrained writes them"
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as error:
            raise ValueError(f"{folder} holds no usable tokenizer ({error}); {fix}") from None
        if len(tokenizer) <= len(set(tokenizer.all_special_ids)):  # transformers 5 makes an empty one silently
            raise ValueError(f"{folder} holds no usable tokenizer (no vocabulary besides special tokens); {fix}")
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            files = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}
        return cls(tokenizer, clean_style, files)

    def state(self) -> dict[str, Any]:
        """Plain values for model.pt: the tokenizer's files and the cleaning style."""
        return {"files": dict(self.files), "clean_style": self.clean_style}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "SubwordTokenizer":
        from transformers import AutoTokenizer

        with tempfile.TemporaryDirectory() as tmp:
            for name, data in state["files"].items():
                (Path(tmp) / name).write_bytes(data)
            tokenizer = AutoTokenizer.from_pretrained(tmp)
        return cls(tokenizer, state["clean_style"], dict(state["files"]))

    def __len__(self) -> int:
        return len(self.tokenizer)

    def word_starts(self) -> torch.Tensor:
        """(len,) bool: which ids begin a new word ("##" pieces of WordPiece and byte-level BPE pieces
        without a leading space continue one); trigram blocking works on these words (WordPiece
        makes three of a hyphenated word)."""
        pieces = self.tokenizer.convert_ids_to_tokens(list(range(len(self))))
        if any(piece.startswith("Ġ") for piece in pieces):  # byte-level BPE (GPT-2): a space starts a word
            return torch.tensor([piece.startswith("Ġ") for piece in pieces])
        return torch.tensor([not piece.startswith("##") for piece in pieces])

    def banned(self, size: int) -> torch.Tensor:
        """(size,) bool: ids a report never contains: the tokenizer's special tokens but EOS ([CLS],
        [PAD], [MASK], [UNK], ...) and ids beyond its vocabulary."""
        never = torch.zeros(size, dtype=torch.bool)
        never[len(self):] = True
        never[[i for i in self.tokenizer.all_special_ids if i != self.eos_id and i < size]] = True
        return never

    def encode_batch(self, cleaned_reports: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, max_length) int32 ids [BOS, pieces..., EOS, pad...] cut to max_length (the cut can drop
        EOS, as R2Gen's), and (n,) lengths."""
        pieces = self.tokenizer(list(cleaned_reports), add_special_tokens=False)["input_ids"]
        ids = np.full((len(pieces), max_length), self.pad_id, dtype=np.int32)
        lengths = np.zeros(len(pieces), dtype=np.int32)
        for row, report in enumerate(pieces):
            encoded = ([self.bos_id] + report + [self.eos_id])[:max_length]
            ids[row, :len(encoded)] = encoded
            lengths[row] = len(encoded)
        return ids, lengths

    def _plain(self, text: str) -> str:
        return self.tokenizer.decode(self.tokenizer(text, add_special_tokens=False)["input_ids"],
                                     skip_special_tokens=True)

    def decode(self, ids: Iterable[int]) -> str:
        """Cleaned report text of ids up to the first EOS (pass them without BOS)."""
        ids = list(ids)
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if not text.strip():
            return ""  # as Vocabulary.decode: evaluate names empty reports instead of scoring " ."
        cleaned = " ".join(clean_report(text, self.clean_style).split())
        return cleaned.replace(" - ", "-") if self.joins_hyphens else cleaned
