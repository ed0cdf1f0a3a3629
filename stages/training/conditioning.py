"""The labels a label-conditioned generator (XProNet, EKAGen) sees.

Training studies use their pseudo-labels from labels.h5; validation and test studies use the
labels the diagnosis classifier predicts from their images (adm.h5 stores every image's class
probabilities, diagnosis.pt the study-level thresholds). Labels read from reference reports at
test time would leak the answer into the input; that is only available as a flagged ablation.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from stages.adm.classifier import labels_from_probs, load_diagnosis
from stages.core.errors import StageError


def predicted_study_labels(adm_h5: Path, diagnosis_pt: Path, image_study: np.ndarray, n_studies: int) -> np.ndarray:
    """(n_studies, 14) binary labels predicted from each study's images (zeros for a study without images)."""
    with h5py.File(adm_h5, "r") as h5:
        probs = h5["probs"][:]
    if len(probs) != len(image_study):
        raise StageError(f"{adm_h5} has {len(probs)} images but dataset.h5 has {len(image_study)}; "
                         "rebuild it with rrg-stage adm-masks --force")
    try:
        diagnosis = load_diagnosis(diagnosis_pt)
    except (ValueError, FileNotFoundError) as error:
        raise StageError(str(error)) from None
    labels, _ = labels_from_probs(probs, diagnosis, study=image_study)
    out = np.zeros((n_studies, labels.shape[1]), dtype=np.float32)
    out[np.unique(image_study)] = labels
    return out


def conditioning_labels(train_labels: np.ndarray, splits: np.ndarray, adm_h5: Path, diagnosis_pt: Path,
                        image_study: np.ndarray) -> np.ndarray:
    """labels.h5's binary labels for the training split, the classifier's predictions elsewhere."""
    predicted = predicted_study_labels(adm_h5, diagnosis_pt, image_study, len(splits))
    return np.where((np.asarray(splits) == "train")[:, None], train_labels, predicted).astype(np.float32)
