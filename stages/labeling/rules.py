"""Fast rule-based labeler for the 14 CheXpert observations in chest X-ray reports.

It follows the CheXpert labeler's recipe (mention phrases, then negation, then uncertainty, then
aggregation over sentences) with regular expressions instead of a dependency parser, so a whole
dataset is labelled in seconds on one core. Its conventions mirror what CheXbert was trained on:

* a report is positive for an observation if any mention is positive, else uncertain if any is
  uncertain, else negative if any is negative, else blank;
* "no change in the small effusion", "stable cardiomegaly" stay positive;
* "heart size is normal", "the heart is not enlarged" are negative for Cardiomegaly;
* a heart or mediastinum that is only called "stable" / "unchanged" is uncertain (it may be
  enlarged), unless the report states elsewhere that it is normal;
* "XXX or YYY" without negation is uncertain for both;
* No Finding is positive only when no pathology (Support Devices excluded) and no abnormality
  outside the 14 observations (emphysema, granuloma, degenerative change, ...) is positive or
  uncertain; otherwise it is blank.

The vocabulary lives in `stages.labeling.phrases`.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator, Sequence

import numpy as np

from stages.labeling import phrases as ph
from stages.labeling.observations import (
    BLANK,
    NEGATIVE,
    NO_FINDING,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
)

# Ranks used while aggregating; the highest rank of an observation wins. A "weak" uncertain
# mention (an anchor only called stable) ranks below an explicit negative one.
_NONE, _WEAK, _NEG, _UNC, _POS = 0, 1, 2, 3, 4
_RANK_TO_CLASS = np.array([BLANK, UNCERTAIN, NEGATIVE, UNCERTAIN, POSITIVE], dtype=np.int8)
_N_OBS = len(OBSERVATIONS)
_OTHER = _N_OBS  # slot for abnormalities outside the 14 observations
_SUPPORT_DEVICES = OBSERVATIONS.index("Support Devices")


def _bounded(pattern: str) -> str:
    """Match word patterns as whole words; punctuation patterns as they are."""
    return rf"\b(?:{pattern})\b" if pattern[0].isalpha() or pattern[0] == "(" else pattern


def _alternation(prefix: str, patterns: Sequence[str]) -> str:
    """One named group per pattern so `match.lastindex` tells which pattern matched."""
    return "|".join(f"(?P<{prefix}{i}>{p})" for i, p in enumerate(patterns))


_MENTION_RE = re.compile(
    r"\b(?:" + _alternation("m", [rf"(?:{p})(?!\w)" for _, _, p in ph.MENTIONS]) + ")"
)
_MENTION_KIND = tuple(kind for kind, _, _ in ph.MENTIONS)


def _targets(observations: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """(slot, highest rank) per observation; a trailing "?" caps the observation at uncertain."""
    if not observations:
        return ((_OTHER, _POS),)
    return tuple(
        (OBSERVATIONS.index(o.rstrip("?")), _UNC if o.endswith("?") else _POS)
        for o in observations
    )


_MENTION_TARGETS = tuple(_targets(obs) for _, obs, _ in ph.MENTIONS)

_CUE_RE = re.compile(_alternation("c", [_bounded(p) for _, p in ph.CUES]))
_CUE_TYPE = tuple(t for t, _ in ph.CUES)

_POST_RE = re.compile(
    r"(?:(?!\b(?:but|however|although|though|which|except|whereas|while|otherwise)\b)[^.;,])"
    r"{0,60}?(?:" + _alternation("p", [_bounded(p) for _, p in ph.POST_CUES]) + ")"
)
_POST_TYPE = tuple(t for t, _ in ph.POST_CUES)

_STATE_RE = re.compile(_alternation("s", [_bounded(p) for _, p in ph.STATES]))
_NEG_BIT, _POS_BIT, _UNC_BIT, _STABLE_BIT, _ABSENT_BIT = 1, 2, 4, 8, 16
_STATE_BIT = {
    ph.STATE_NEG: _NEG_BIT,
    ph.STATE_POS: _POS_BIT,
    ph.STATE_UNC: _UNC_BIT,
    ph.STATE_STABLE: _STABLE_BIT,
    ph.STATE_ABSENT: _ABSENT_BIT,
}
_STATE_BITS = tuple(_STATE_BIT[t] for t, _ in ph.STATES)

# Sentence ends: ., ! or ? before a space or the end, "word.Word" run-ons, blank lines. "vs."
# and "e.g." do not end a sentence.
_SENTENCE_END_RE = re.compile(
    r"(?<!\bvs)(?<!\be\.g)(?<!\bi\.e)[.!?]+(?=\s|$)|(?<=[a-z]{2})\.(?=[A-Z])|\n[ \t]*\n"
)
# Gap between two mentions that makes them alternatives ("atelectasis or scarring").
_OR_GAP_RE = re.compile(r"\s*,?\s*(?:or|and/or|versus|vs\.?|/)\s+(?:[\w-]+\s+){0,3}")
_LIST_GAP_RE = re.compile(
    r"\s*,\s*(?:(?!(?:may|might|could|likely|possibly|probably|either|which|with|is|are)\b)"
    r"[\w-]+\s+){0,2}"
)
# Gap that joins anchors sharing one state ("heart, pulmonary vessels and mediastinum are normal").
_CONNECTOR_RE = re.compile(
    r"\s*(?:,\s*(?:[\w-]+\s+){1,3})*(?:,|and|&|/|,\s*and|as\s+well\s+as)?\s*(?:the\s+)?"
)
# Where the words before an anchor stop describing it.
_PRE_CUT_RE = re.compile(r"[,;]|\b(?:is|are|was|were|with|but|which)\b")
_TRAILING_AND_RE = re.compile(r"\band\s+(?:the\s+)?$")
_PLACEMENT_RE = re.compile(ph.PLACEMENT)
_FOUR_WORDS_RE = re.compile(r"[\s/]*(?:[\w-]+[\s/]+){0,4}")


def _lower(text: str) -> str:
    """Lower-case without changing character offsets (str.lower can lengthen a few letters)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of a report, terminal punctuation included."""
    spans = []
    start = 0
    for m in _SENTENCE_END_RE.finditer(text):
        if text[start : m.end()].strip():
            spans.append((start, m.end()))
        start = m.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def _state_bits(text: str) -> int:
    bits = 0
    for m in _STATE_RE.finditer(text):
        bits |= _STATE_BITS[m.lastindex - 1]
    return bits


def _rank_from_states(bits: int) -> int:
    """Heart / mediastinum status from the state words describing it."""
    neg = bits & (_NEG_BIT | _ABSENT_BIT)
    pos, unc, stable = bits & _POS_BIT, bits & _UNC_BIT, bits & _STABLE_BIT
    if unc and (pos or stable or not neg):
        return _UNC
    if neg:  # also wins over the state inside the mention: "no mediastinal widening"
        return _NEG
    if pos:
        return _POS
    if stable:
        return _WEAK
    return _NONE


class RuleLabeler:
    """Regex CheXpert-style labeler: raw classes BLANK/POSITIVE/NEGATIVE/UNCERTAIN per report.

    `stable_silhouette_uncertain=False` leaves a heart or mediastinum that is only called
    "stable" blank instead of uncertain (CheXpert's rule; some labelers ignore such mentions).
    """

    def __init__(self, stable_silhouette_uncertain: bool = True) -> None:
        self._rank_to_class = _RANK_TO_CLASS.copy()
        if not stable_silhouette_uncertain:
            self._rank_to_class[_WEAK] = BLANK
        # ranks that end as a positive or uncertain label, as a set for the No Finding check
        self._finding_ranks = {
            r for r, c in enumerate(self._rank_to_class.tolist()) if c in (POSITIVE, UNCERTAIN)
        }

    def label(self, reports: Sequence[str]) -> np.ndarray:
        """Label many reports: an (n, 14) int8 array of raw classes."""
        out = np.zeros((len(reports), _N_OBS), dtype=np.int8)
        for i, report in enumerate(reports):
            out[i] = self.label_report(report)
        return out

    def label_report(self, report: str) -> np.ndarray:
        """Label one report: a (14,) int8 array of raw classes."""
        ranks = [_NONE] * (_N_OBS + 1)
        for _, obs, rank in self._mentions(report):
            if rank > ranks[obs]:
                ranks[obs] = rank
        labels = self._rank_to_class[ranks[:_N_OBS]]
        found = ranks[_OTHER] >= _UNC or any(
            r in self._finding_ranks for i, r in enumerate(ranks[:NO_FINDING]) if i != _SUPPORT_DEVICES
        )
        labels[NO_FINDING] = BLANK if found else POSITIVE
        return labels

    def label_sentences(self, report: str) -> list[tuple[str, np.ndarray]]:
        """Each sentence with its own (14,) raw classes, so findings can be placed by the side /
        zone words of their sentence. No Finding is left blank at sentence level."""
        spans = sentence_spans(report)
        ranks = [[_NONE] * (_N_OBS + 1) for _ in spans]
        for s, obs, rank in self._mentions(report, spans):
            if rank > ranks[s][obs]:
                ranks[s][obs] = rank
        result = []
        for (start, end), r in zip(spans, ranks):
            labels = self._rank_to_class[r[:_N_OBS]]
            labels[NO_FINDING] = BLANK
            result.append((report[start:end].strip(), labels))
        return result

    def _mentions(
        self, report: str, spans: list[tuple[int, int]] | None = None
    ) -> Iterator[tuple[int, int, int]]:
        """(sentence index, observation slot, rank) for every mention in the report."""
        low = _lower(report)
        mentions = [(m.start(), m.end(), m.lastindex - 1) for m in _MENTION_RE.finditer(low)]
        if not mentions:
            return
        if spans is None:
            spans = sentence_spans(report)
        cues = [(m.start(), m.end(), _CUE_TYPE[m.lastindex - 1]) for m in _CUE_RE.finditer(low)]
        cue_starts = [c[0] for c in cues]
        k = 0
        for s, (s0, s1) in enumerate(spans):
            group = []
            while k < len(mentions) and mentions[k][0] < s1:
                if mentions[k][0] >= s0:
                    group.append(mentions[k])
                k += 1
            if group:
                for obs, rank in _sentence_mentions(low, s0, s1, group, cues, cue_starts):
                    yield s, obs, rank


def _sentence_mentions(
    low: str,
    s0: int,
    s1: int,
    group: list[tuple[int, int, int]],
    cues: list[tuple[int, int, str]],
    cue_starts: list[int],
) -> Iterator[tuple[int, int]]:
    """(observation slot, rank) for the mentions of one sentence."""
    uncertain_run = _alternative_runs(low, group)
    for i, (start, end, idx) in enumerate(group):
        kind = _MENTION_KIND[idx]
        if kind == ph.ANCHOR:
            rank = _anchor_rank(low, s0, s1, group, i)
        else:
            rank = _finding_rank(low, s0, s1, start, end, cues, cue_starts)
            if rank == _POS and (kind == ph.UNCERTAIN_FINDING or uncertain_run[i]):
                rank = _UNC
        if rank != _NONE:
            for obs, cap in _MENTION_TARGETS[idx]:
                yield obs, min(rank, cap)


def _finding_rank(
    low: str,
    s0: int,
    s1: int,
    start: int,
    end: int,
    cues: list[tuple[int, int, str]],
    cue_starts: list[int],
) -> int:
    """Negation and uncertainty of one mention from the cues before and right after it."""
    neg = unc = strong = False
    j = bisect_left(cue_starts, start) - 1
    while j >= 0:
        cs, ce, ctype = cues[j]
        if cs < s0:
            break
        j -= 1
        if ce > start:
            continue
        if ctype == ph.TERMINATOR:
            break
        if ctype == ph.NEG:
            neg = True
        elif ctype == ph.UNC:
            unc = True
        elif ctype == ph.UNC_STRONG:
            strong = True
        elif ctype == ph.NEG_ADJ and not low[ce:start].strip():
            neg = True
        elif ctype == ph.NEG_NEAR and _FOUR_WORDS_RE.fullmatch(low, ce, start):
            neg = True
    post = _POST_RE.match(low, end, s1)
    if post is not None:
        ptype = _POST_TYPE[post.lastindex - 1]
        strong |= ptype == ph.UNC_STRONG
        neg |= ptype == ph.NEG
        unc |= ptype == ph.UNC
    if strong:
        return _UNC
    if neg:
        return _NEG
    return _UNC if unc else _POS


def _alternative_runs(low: str, group: list[tuple[int, int, int]]) -> list[bool]:
    """Mark mentions in runs joined by "or" / "versus" ("atelectasis, scarring or pneumonia")."""
    n = len(group)
    flags = [False] * n
    if n < 2:
        return flags
    run_start = 0
    has_or = False
    for i in range(n - 1):
        a, b = group[i], group[i + 1]
        linked = _MENTION_KIND[a[2]] != ph.ANCHOR and _MENTION_KIND[b[2]] != ph.ANCHOR
        is_or = linked and _OR_GAP_RE.fullmatch(low, a[1], b[0]) is not None
        if is_or or (linked and _LIST_GAP_RE.fullmatch(low, a[1], b[0]) is not None):
            has_or |= is_or
            continue
        if has_or:
            flags[run_start : i + 1] = [True] * (i + 1 - run_start)
        run_start, has_or = i + 1, False
    if has_or:
        flags[run_start:] = [True] * (n - run_start)
    return flags


def _pre_window(low: str, s0: int, group: list[tuple[int, int, int]], i: int) -> str:
    """Words before anchor i that can describe it ("normal heart size", "widened mediastinum")."""
    left = group[i - 1][1] if i else s0
    text = low[left : group[i][0]]
    cut = 0
    for m in _PRE_CUT_RE.finditer(text):
        cut = m.end()
    text = text[cut:]
    return "" if _TRAILING_AND_RE.search(text) else text


def _post_bits(low: str, s1: int, group: list[tuple[int, int, int]], i: int) -> int:
    """State of anchor i from the words after it, up to the first clause that has one."""
    has_next = i + 1 < len(group)
    right = group[i + 1][0] if has_next else s1
    segments = low[group[i][1] : right].split(",")
    if has_next and len(segments) > 1:
        segments.pop()
    for segment in segments:
        # "no" after the anchor negates something else: "enlarged with no comparison studies"
        bits = _state_bits(segment) & ~_ABSENT_BIT
        if bits:
            return bits
    return 0


def _anchor_rank(low: str, s0: int, s1: int, group: list[tuple[int, int, int]], i: int) -> int:
    """Heart / mediastinum status; an anchor with no state words of its own shares the state
    of the anchors it is listed with ("heart and mediastinum are normal")."""
    start, end, _ = group[i]
    if _PLACEMENT_RE.search(low, max(s0, start - 30), start):
        return _NONE
    bits = (
        _state_bits(low[start:end])
        | _state_bits(_pre_window(low, s0, group, i))
        | _post_bits(low, s1, group, i)
    )
    if not bits:
        first = last = i
        while first > 0 and _CONNECTOR_RE.fullmatch(low, group[first - 1][1], group[first][0]):
            first -= 1
        while last + 1 < len(group) and _CONNECTOR_RE.fullmatch(
            low, group[last][1], group[last + 1][0]
        ):
            last += 1
        if first != last:
            bits = _state_bits(_pre_window(low, s0, group, first)) | _post_bits(
                low, s1, group, last
            )
    return _rank_from_states(bits)
