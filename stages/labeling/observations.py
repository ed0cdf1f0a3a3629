"""The 14 CheXpert observations and the label conventions every stage shares."""

from __future__ import annotations

import numpy as np

OBSERVATIONS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)
NO_FINDING = OBSERVATIONS.index("No Finding")

# Raw classes, stored as int8 in labels.h5.
BLANK, POSITIVE, NEGATIVE, UNCERTAIN = 0, 1, 2, 3
CLASS_NAMES: tuple[str, ...] = ("blank", "positive", "negative", "uncertain")


def to_binary(raw: np.ndarray, uncertain_as_positive: bool = False) -> np.ndarray:
    """Binary labels (n, 14): positive -> 1; No Finding -> 1 when no finding is positive.

    XProNet's prototype grouping also counts uncertain mentions as positive.
    """
    raw = np.asarray(raw)
    positive = raw == POSITIVE
    if uncertain_as_positive:
        positive |= raw == UNCERTAIN
    binary = positive.astype(np.uint8)
    binary[..., NO_FINDING] = (~positive[..., :NO_FINDING].any(axis=-1)).astype(np.uint8)
    return binary
