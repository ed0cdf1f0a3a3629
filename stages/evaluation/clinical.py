"""Clinical efficacy (CE): do the generated reports state the same findings as the references?

Both sides are labelled by the same labeler from the texts the NLG metrics score, and turned into
the binary form of the CE convention (positive -> 1, uncertain / negative / blank -> 0, No Finding
-> 1 when no finding is positive). Micro, macro and example-based precision / recall / F1 are
scikit-learn's `micro`, `macro` and `samples` averages over the 14 observations; a class or
study whose score is undefined (nothing to find and nothing predicted) counts as 0, as in the
CE code the papers share.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from stages.core.errors import StageError
from stages.labeling import Labeler, get_labeler
from stages.labeling.observations import OBSERVATIONS, to_binary

AVERAGES = {"micro": "micro", "macro": "macro", "example": "samples"}


def load_labeler(name: str, checkpoint: Path | None = None) -> tuple[Labeler, str]:
    """The labeler and the name metrics.json records for it (CE numbers mean little without it)."""
    try:
        labeler = get_labeler(name, checkpoint)
    except (ValueError, FileNotFoundError) as error:
        raise StageError(str(error)) from None
    return labeler, name if checkpoint is None else f"{name} ({Path(checkpoint).name})"


def binary_labels(labeler: Labeler, reports: Sequence[str]) -> np.ndarray:
    """(n, 14) uint8 labels in the CE convention."""
    return to_binary(labeler.label(list(reports)))


def ce_scores(reference: np.ndarray, generated: np.ndarray) -> dict[str, Any]:
    """Micro / macro / example-based P, R, F1, and per-observation scores with their counts."""
    scores: dict[str, Any] = {}
    for name, average in AVERAGES.items():
        precision, recall, f1, _ = precision_recall_fscore_support(reference, generated, average=average,
                                                                   zero_division=0)
        scores[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1)}
    precision, recall, f1, support = precision_recall_fscore_support(reference, generated, average=None,
                                                                     zero_division=0)
    predicted = np.asarray(generated).sum(axis=0)
    scores["per_observation"] = {
        name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
               "reference_positives": int(support[k]), "generated_positives": int(predicted[k])}
        for k, name in enumerate(OBSERVATIONS)
    }
    return scores
