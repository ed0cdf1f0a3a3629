"""Report cleaning that reproduces the R2Gen convention character for character.

Every published IU X-Ray / MIMIC-CXR number was computed on reports cleaned this way, so the
quirks are kept on purpose: the punctuation class contains the range ``:-[`` (which also deletes
``; < = > ? @``), decimal points vanish ("1.5" -> "15"), and empty sentences survive as ". .".
"""

from __future__ import annotations

import re

# Sequential str.replace passes, applied in order, before lowercasing.
_DEDUP_PERIODS = [("..", ".")]
_NUMBERING = [
    ("1. ", ""),
    (". 2. ", ". "), (". 3. ", ". "), (". 4. ", ". "), (". 5. ", ". "),
    (" 2. ", ". "), (" 3. ", ". "), (" 4. ", ". "), (" 5. ", ". "),
]
_PASSES: dict[str, list[tuple[str, str]]] = {
    "iu": _DEDUP_PERIODS * 3 + _NUMBERING,
    "mimic": [("\n", " ")] + [("__", "_")] * 7 + [("  ", " ")] * 6 + _DEDUP_PERIODS * 8 + _NUMBERING,
}
_DELETED_CHARS = str.maketrans("", "", "\"/\\'")
_PUNCTUATION = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")


def clean_sentence(sentence: str) -> str:
    """Strip quotes, slashes and R2Gen's punctuation class from one lowercased sentence."""
    return _PUNCTUATION.sub("", sentence.translate(_DELETED_CHARS).strip().lower())


def clean_report(report: str, style: str = "iu") -> str:
    """Clean a report as R2Gen does: sentences joined by " . " and ending with " .".

    `style` is "iu" (IU X-Ray, the demo) or "mimic" (also collapses newlines, underscores and
    repeated spaces first).
    """
    try:
        passes = _PASSES[style]
    except KeyError:
        raise ValueError(f"unknown cleaning style {style!r}; use one of {sorted(_PASSES)}") from None
    for old, new in passes:
        report = report.replace(old, new)
    sentences = report.strip().lower().split(". ")
    return " . ".join(clean_sentence(s) for s in sentences) + " ."


def is_empty(cleaned: str) -> bool:
    """True when a cleaned report has no word left (only the sentence marks)."""
    return not any(token != "." for token in cleaned.split())


def split_sentences(cleaned: str) -> list[str]:
    """The non-empty sentences of a cleaned report, without their " ." marks.

    R2Gen's cleaning joins sentences with " . " and keeps empty ones as ". ."; sentence-level
    models (PRIOR's local alignment and prototype bank) want the sentences themselves.
    """
    return [s for s in (part.strip(" .") for part in cleaned.split(" . ")) if s]
