"""Report labelling: the 14 CheXpert observations, rule-based and CheXbert labelers."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np


class Labeler(Protocol):
    def label(self, reports: Sequence[str]) -> np.ndarray:
        """(n, 14) int8 raw classes (blank, positive, negative, uncertain)."""


def get_labeler(name: str, checkpoint: Path | None = None) -> Labeler:
    """The rule labeler (offline default) or CheXbert from a user's checkpoint file."""
    if name == "rules":
        from stages.labeling.rules import RuleLabeler

        return RuleLabeler()
    if name == "chexbert":
        if checkpoint is None:
            raise ValueError("--labeler chexbert needs --checkpoint chexbert.pth (the official CheXbert weights)")
        from stages.labeling.chexbert import CheXbertLabeler

        return CheXbertLabeler.from_checkpoint(checkpoint)
    raise ValueError(f"unknown labeler {name!r}; use rules or chexbert")
