"""The R2Gen word vocabulary: frequent training tokens, ids from 1, 0 as both BOS and EOS/pad."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

UNK = "<unk>"


class Vocabulary:
    """Token <-> id mapping with R2Gen's encoding so stored ids match published pipelines."""

    def __init__(self, tokens: Sequence[str]):
        if UNK not in tokens:
            raise ValueError(f"a vocabulary must contain {UNK}")
        self.tokens = sorted(tokens)
        self.token_to_id = {token: i + 1 for i, token in enumerate(self.tokens)}
        self.unk_id = self.token_to_id[UNK]

    @classmethod
    def build(cls, cleaned_reports: Iterable[str], min_count: int) -> "Vocabulary":
        """Keep tokens seen at least `min_count` times (R2Gen: 3 for IU X-Ray, 10 for MIMIC)."""
        counts = Counter(token for report in cleaned_reports for token in report.split())
        return cls([token for token, n in counts.items() if n >= min_count] + [UNK])

    def __len__(self) -> int:
        """Number of ids including the reserved 0."""
        return len(self.tokens) + 1

    def encode(self, cleaned_report: str, max_length: int) -> list[int]:
        """[0, ids..., 0] cut to `max_length` (the cut can drop the closing 0, as in R2Gen)."""
        ids = [self.token_to_id.get(token, self.unk_id) for token in cleaned_report.split()]
        return ([0] + ids + [0])[:max_length]

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first 0; pass ids without the leading BOS."""
        words = []
        for i in ids:
            if i <= 0:
                break
            words.append(self.tokens[i - 1])
        return " ".join(words)

    def encode_batch(self, cleaned_reports: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Zero-padded (n, max_length) int32 ids and (n,) lengths."""
        ids = np.zeros((len(cleaned_reports), max_length), dtype=np.int32)
        lengths = np.zeros(len(cleaned_reports), dtype=np.int32)
        for row, report in enumerate(cleaned_reports):
            encoded = self.encode(report, max_length)
            ids[row, : len(encoded)] = encoded
            lengths[row] = len(encoded)
        return ids, lengths

    def to_json(self) -> str:
        return json.dumps({"tokens": self.tokens, "unk": UNK}, indent=0)

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        return cls(json.loads(Path(path).read_text())["tokens"])
