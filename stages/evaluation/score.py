"""Score one system's reports for one split: every study, NLG and CE, with the protocol recorded.

A missing, empty or unknown study is an error, never a skip: a number computed on the studies a
system happened to answer is not comparable with one computed on the whole split.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.core.artifacts import atomic_output
from stages.core.errors import StageError
from stages.evaluation.bootstrap import DRAWS, LEVEL, StudyScores, format_interval
from stages.evaluation.clinical import binary_labels, ce_scores
from stages.evaluation.nlg import NLG_METRICS, NlgScorer
from stages.evaluation.references import References, clean_prediction
from stages.labeling import Labeler
from stages.labeling.observations import OBSERVATIONS
from stages.text.clean import is_empty


@dataclass
class Evaluation:
    """Metrics plus what was scored per study (for the viewer and the scored CSV)."""

    metrics: dict[str, Any]
    ids: list[str]
    generated: list[str]
    references: list[str]
    generated_labels: np.ndarray
    reference_labels: np.ndarray


def _listed(ids: list[str]) -> str:
    return f"{len(ids)} ({', '.join(ids[:10])}{', ...' if len(ids) > 10 else ''})"


def scored_predictions(predictions: Mapping[str, str], references: References, source: str) -> list[str]:
    """The cleaned prediction of every reference study, in reference order; errors name the ids."""
    known = set(references.ids)
    missing = [i for i in references.ids if i not in predictions]
    extra = sorted(i for i in predictions if i not in known)
    cleaned = {i: clean_prediction(predictions[i], references.clean_style) for i in references.ids if i in predictions}
    empty = [i for i, text in cleaned.items() if is_empty(text)]
    problems = []
    if missing:
        problems.append(f"no prediction for {_listed(missing)} of the {len(known)} {references.split} studies")
    if empty:
        problems.append(f"an empty prediction for {_listed(empty)}")
    if extra:
        problems.append(f"predictions for {_listed(extra)} studies that are not in the {references.split} split")
    if problems:
        raise StageError(f"{source}: " + "; ".join(problems) + f". Every study of the {references.split!r} split "
                         f"of {references.source.get('path')} must have exactly one non-empty report, and no other "
                         "study may appear (check --split and the id column)")
    return [cleaned[i] for i in references.ids]


def evaluate(predictions: Mapping[str, str], references: References, labeler: Labeler, labeler_name: str, *,
             source: str = "predictions", scorer: NlgScorer | None = None,
             protocol: Mapping[str, Any] | None = None) -> Evaluation:
    """NLG and CE of `predictions` ({study id: report}) against every study of `references`.

    `scorer` lets several evaluations share one METEOR process; without it one is started (after
    the predictions were checked, so a bad file fails before Java starts). `protocol` fields
    (decoding, seed, checkpoint, oracle, ...) are recorded as given.
    """
    generated = scored_predictions(predictions, references, source)
    started = time.perf_counter()
    if scorer is None:
        with NlgScorer() as own:
            nlg = own.score(references.texts, generated)
    else:
        nlg = scorer.score(references.texts, generated)
    nlg_s = time.perf_counter() - started
    started = time.perf_counter()
    reference_labels = binary_labels(labeler, references.texts)
    generated_labels = binary_labels(labeler, generated)
    ce = ce_scores(reference_labels, generated_labels)
    scores = StudyScores.of(references.ids, references.texts, generated, reference_labels, generated_labels)
    metrics = {
        "split": references.split, "n_studies": len(references.ids), "labeler": labeler_name,
        **dict(protocol or {}),
        "references": {**references.source, "clean_style": references.clean_style},
        "nlg": nlg, "ce": ce,
        "intervals": {"level": LEVEL, "draws": DRAWS, "over": "studies", **scores.intervals()},
        "timing_s": {"nlg": round(nlg_s, 3), "ce": round(time.perf_counter() - started, 3)},
    }
    return Evaluation(metrics, list(references.ids), generated, list(references.texts), generated_labels,
                      reference_labels)


def write_scored(path: Path, evaluation: Evaluation) -> None:
    """id, generated and reference text exactly as scored, and both sides' positive observations."""
    def positives(labels: np.ndarray) -> list[str]:
        return ["; ".join(OBSERVATIONS[k] for k in np.flatnonzero(row)) for row in labels]

    table = pd.DataFrame({"id": evaluation.ids, "generated": evaluation.generated,
                          "reference": evaluation.references,
                          "generated_labels": positives(evaluation.generated_labels),
                          "reference_labels": positives(evaluation.reference_labels)})
    with atomic_output(Path(path)) as tmp:
        table.to_csv(tmp, index=False)


def read_scored(path: Path) -> StudyScores:
    """The per-study counts of a scored CSV (write_scored's), for paired comparisons between runs."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = {"id", "generated", "reference", "generated_labels", "reference_labels"} - set(table.columns)
    except (OSError, ValueError) as error:
        raise StageError(f"cannot read {path} ({error}); rescore the run with rrg-stage evaluate --force") from None
    if missing:
        raise StageError(f"{path} lacks the columns {sorted(missing)}; rescore the run with rrg-stage evaluate --force")

    def labels(column: str) -> np.ndarray:
        return np.asarray([[name in cell.split("; ") for name in OBSERVATIONS] for cell in table[column]])

    return StudyScores.of(table["id"].tolist(), table["reference"].tolist(), table["generated"].tolist(),
                          labels("reference_labels"), labels("generated_labels"))


def summary(metrics: Mapping[str, Any]) -> str:
    """A few readable lines: NLG, then CE with the labeler that produced it."""
    nlg = "  ".join(f"{name.replace('_', '-')} {metrics['nlg'][name]:.3f}" for name in NLG_METRICS)
    ce = metrics["ce"]
    ce_line = "  ".join(f"{name} P/R/F1 {ce[name]['precision']:.3f}/{ce[name]['recall']:.3f}/{ce[name]['f1']:.3f}"
                        for name in ("micro", "macro", "example"))
    text = (f"{metrics['split']}: {metrics['n_studies']} studies\n  NLG  {nlg}\n"
            f"  CE ({metrics['labeler']})  {ce_line}")
    spans = metrics.get("intervals", {})
    if spans.get("BLEU_4") and spans.get("CE_micro_F1"):
        text += (f"\n  {spans['level']:.0%} bootstrap intervals over the studies: BLEU-4 {format_interval(spans['BLEU_4'])}"
                 f", CE micro-F1 {format_interval(spans['CE_micro_F1'])}")
    return text
