"""Both sides of the comparison in R2Gen's convention.

R2Gen scores the words its tokenizer decodes: a generated report is a sequence of vocabulary
words, and the reference is `decode(reports_ids[:, 1:])`, i.e. the cleaned report with
out-of-vocabulary words turned into `<unk>`, cut to the maximum length (BOS included) and read up
to the first 0. Every published IU X-Ray / MIMIC-CXR number was computed on these references, so
the toolkit scores the same text; a generated report is cleaned the same way (R2Gen models
already emit cleaned words; cleaning is idempotent on them).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from stages.core.errors import StageError
from stages.data.h5dataset import DatasetFile
from stages.data.r2gen import load_annotation
from stages.text.clean import clean_report
from stages.text.vocab import UNK, Vocabulary

# "<unk>" is a vocabulary word for an R2Gen model; cleaning would strip its brackets ("unk").
_UNK_GUARD = "\x00unk\x00"


def clean_prediction(report: str, style: str) -> str:
    """A generated report as R2Gen scores it: cleaned, `<unk>` kept, words joined by single spaces.

    R2Gen's decoder joins words with one space; ROUGE-L splits on " ", so doubled spaces left by
    cleaning would add empty tokens.
    """
    cleaned = clean_report(report.replace(UNK, _UNK_GUARD), style).replace(_UNK_GUARD, UNK)
    return " ".join(cleaned.split())


def r2gen_reference(vocab: Vocabulary, cleaned: str, max_length: int) -> str:
    """What R2Gen decodes from a study's stored ids: encode (cut to max_length), drop BOS, decode."""
    return vocab.decode(vocab.encode(cleaned, max_length)[1:])


@dataclass
class References:
    """The reference reports of one split, in study-id order, with where they came from."""

    split: str
    ids: list[str]
    texts: list[str]
    clean_style: str
    source: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ids:
            raise StageError(f"the {self.split!r} split of {self.source.get('path')} has no studies; "
                             "choose another --split")


def from_dataset(dataset_h5: Path, vocab_json: Path, split: str, clean_style: str) -> References:
    """References from a preprocessed dataset.h5: its stored token ids decoded with vocab.json."""
    vocab = Vocabulary.load(vocab_json)
    with DatasetFile(dataset_h5) as data:
        rows = data.split_indices(split)
        ids = [data.ids[i] for i in rows]
        texts = [vocab.decode(data.token_ids[i, 1:]) for i in rows]
        max_length = int(data.token_ids.shape[1])
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return References(split, [ids[i] for i in order], [texts[i] for i in order], clean_style,
                      {"path": str(dataset_h5), "vocab": str(vocab_json), "max_length": max_length,
                       "vocab_size": len(vocab) - 1})


def from_annotation(annotation: Path, split: str, clean_style: str, min_count: int, max_length: int) -> References:
    """References straight from an R2Gen annotation.json (no images needed).

    The vocabulary is built from the training split as R2Gen's tokenizer does (tokens seen at
    least `min_count` times: 3 for IU X-Ray, 10 for MIMIC-CXR; ids cut to 60 / 100).
    """
    data = load_annotation(annotation)
    train = [clean_report(str(entry["report"]), clean_style) for entry in data.get("train", [])]
    if not train:
        raise StageError(f"{annotation} has no training studies: R2Gen's vocabulary (and so its <unk> "
                         "references) is built from the train split")
    vocab = Vocabulary.build(train, min_count)
    entries = sorted(data.get(split, []), key=lambda entry: str(entry["id"]))
    ids = [str(entry["id"]) for entry in entries]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise StageError(f"{annotation}: study ids {duplicates[:5]} appear more than once in {split!r}")
    texts = [r2gen_reference(vocab, clean_report(str(entry["report"]), clean_style), max_length)
             for entry in entries]
    return References(split, ids, texts, clean_style,
                      {"path": str(annotation), "max_length": max_length, "min_count": min_count,
                       "vocab_size": len(vocab) - 1})
