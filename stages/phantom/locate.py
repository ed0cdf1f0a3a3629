"""From report sentences to renderable findings: which observation, which side, which zone, how big."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from stages.labeling.observations import NO_FINDING, POSITIVE, UNCERTAIN
from stages.phantom.render import Finding

_SIDE = [
    ("bilateral", re.compile(r"\b(bilateral|bilaterally|both|bibasilar|bibasal|biapical)\b")),
    ("right", re.compile(r"\bright\b")),
    ("left", re.compile(r"\b(left|lingula|lingular)\b")),
]
_ZONE = [
    ("upper", re.compile(r"\b(upper|apex|apices|apical|biapical)\b")),
    ("lower", re.compile(r"\b(lower|base|bases|basilar|bibasilar|basal|bibasal|costophrenic|retrocardiac)\b")),
    ("middle", re.compile(r"\b(mid|middle|perihilar|hilar|lingula|lingular)\b")),
]
_SEVERITY = [
    (0.6, re.compile(r"\b(trace|tiny|minimal|small|mild|mildly|subtle|slight|slightly)\b")),
    (1.4, re.compile(r"\b(large|severe|marked|markedly|massive|extensive|moderate to large)\b")),
]


def _first(patterns: Sequence[tuple[object, re.Pattern]], text: str, default: object) -> object:
    """The value of the pattern that matches earliest in the text."""
    hits = [(m.start(), value) for value, pattern in patterns if (m := pattern.search(text))]
    return min(hits, key=lambda hit: hit[0])[1] if hits else default


def findings_from_sentences(sentences: Sequence[tuple[str, np.ndarray]]) -> list[Finding]:
    """One `Finding` per observation that some sentence calls positive or uncertain.

    The sentence that mentions the finding decides side, zone and size; a positive mention
    wins over an uncertain one.
    """
    chosen: dict[int, tuple[str, bool]] = {}
    for sentence, labels in sentences:
        for obs in np.flatnonzero((labels == POSITIVE) | (labels == UNCERTAIN)):
            if obs == NO_FINDING:
                continue
            uncertain = labels[obs] == UNCERTAIN
            if obs not in chosen or (chosen[obs][1] and not uncertain):
                chosen[obs] = (sentence.lower(), bool(uncertain))
    return [
        Finding(int(obs), side=_first(_SIDE, text, None), zone=_first(_ZONE, text, None),
                severity=float(_first(_SEVERITY, text, 1.0)), uncertain=uncertain)
        for obs, (text, uncertain) in sorted(chosen.items())
    ]
