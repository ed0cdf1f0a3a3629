"""Bootstrap confidence intervals over test studies.

A demo test split of 82 studies moves Recall@5 by 0.012 per study, so a difference between two
encoders means little without its spread. The studies are resampled with replacement; a paired
interval resamples the same studies for both systems, which is what "A beats B" needs. Report
metrics are bootstrapped through per-study counts (`StudyScores`): BLEU-4 and CE micro-F1 are
functions of summed counts, so a resample costs a sum, not a rescoring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stages.evaluation.nlg import bleu_statistics, corpus_bleu

DRAWS = 1000
LEVEL = 0.95
METRICS = ("BLEU_4", "CE_micro_F1")  # what StudyScores resamples


def resamples(n: int, draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """(draws, n) study indices drawn with replacement; fixed by the seed so runs compare on the same draws."""
    return np.random.default_rng([seed, n]).integers(0, n, size=(draws, n))


def interval(statistic: Callable[[np.ndarray], float | None], n: int, level: float = LEVEL, draws: int = DRAWS,
             seed: int = 0) -> list[float] | None:
    """Percentile interval of `statistic(indices)` over bootstrap resamples of n studies; resamples
    where the statistic is undefined (None or NaN, e.g. an AUROC without positives) are skipped.
    None when fewer than half the resamples are defined."""
    values = [statistic(index) for index in resamples(n, draws, seed)]
    kept = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if len(kept) < draws / 2:
        return None
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(kept, tail)), float(np.percentile(kept, 100 - tail))]


def format_interval(bounds: Sequence[float] | None, signed: bool = False) -> str:
    """'[low, high]' with three decimals ('-' when undefined); signed for differences."""
    if bounds is None:
        return "-"
    spec = "+.3f" if signed else ".3f"
    return f"[{bounds[0]:{spec}}, {bounds[1]:{spec}}]"


@dataclass
class StudyScores:
    """The per-study counts that BLEU-4 and CE micro-F1 of a report set are sums of, so any
    resample of the studies is scored without rescoring text."""

    ids: list[str]
    bleu: np.ndarray  # (studies, 10) bleu_statistics
    ce: np.ndarray    # (studies, 3) true positives, false positives, false negatives over the observations

    @classmethod
    def of(cls, ids: Sequence[str], references: Sequence[str], generated: Sequence[str],
           reference_labels: np.ndarray, generated_labels: np.ndarray) -> "StudyScores":
        reference_labels, generated_labels = np.asarray(reference_labels, bool), np.asarray(generated_labels, bool)
        ce = np.stack([(reference_labels & generated_labels).sum(1), (~reference_labels & generated_labels).sum(1),
                       (reference_labels & ~generated_labels).sum(1)], axis=1)
        return cls(list(ids), bleu_statistics(references, generated), ce.astype(np.float64))

    def metrics(self, index: np.ndarray | slice = slice(None)) -> dict[str, float]:
        tp, fp, fn = self.ce[index].sum(axis=0)
        return {"BLEU_4": corpus_bleu(self.bleu[index]),
                "CE_micro_F1": float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0}

    def intervals(self) -> dict[str, list[float] | None]:
        return {name: interval(lambda i, name=name: self.metrics(i)[name], len(self.ids)) for name in METRICS}


def paired_differences(a: StudyScores, b: StudyScores) -> dict[str, dict[str, Any]]:
    """a - b for each metric, with a 95% interval that resamples the same studies for both."""
    if a.ids != b.ids:
        raise ValueError("the two report sets score different studies (or the same ones in another order)")
    out = {}
    for name in METRICS:
        def gap(i: np.ndarray, name: str = name) -> float:
            return a.metrics(i)[name] - b.metrics(i)[name]
        out[name] = {"difference": gap(np.arange(len(a.ids))), "interval": interval(gap, len(a.ids))}
    return out
