"""What a pretrained encoder is worth downstream, on one split (PRIOR's evaluation, offline).

- zero-shot classification: for each of the 14 observations, a positive and a negative prompt
  ("there is cardiomegaly" / "no cardiomegaly") go through the text side; a study's score is its
  embedding's cosine with the positive minus that with the negative; AUROC per class;
- linear probe: scikit-learn logistic regression per class on the frozen encoder's pooled
  features (mean over a study's views), standardised on train, fit on train, C chosen on
  validation macro-AUROC, scored on the split;
- image-to-report retrieval: each study ranks the split's reports by cosine; Recall@K counts a
  hit when a report of identical text ranks within K (identical reports are one report).
Labels are labels.h5's binary labels. Macro-AUROC averages the classes with at least
`min_positives` positives and some negatives in the split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from stages.labeling.observations import OBSERVATIONS
from stages.pretraining.data import PairSource
from stages.pretraining.model import PriorModel

# The noun phrase of each observation in report language; prompts are "there is X" / "no X".
PHRASES: dict[str, str] = {
    "Enlarged Cardiomediastinum": "widening of the mediastinum",
    "Cardiomegaly": "cardiomegaly",
    "Lung Opacity": "airspace opacity",
    "Lung Lesion": "a pulmonary nodule",
    "Edema": "pulmonary edema",
    "Consolidation": "focal consolidation",
    "Pneumonia": "pneumonia",
    "Atelectasis": "atelectasis",
    "Pneumothorax": "pneumothorax",
    "Pleural Effusion": "pleural effusion",
    "Pleural Other": "pleural thickening",
    "Fracture": "a rib fracture",
    "Support Devices": "a support device",
}
# No Finding has no noun to negate: its prompts say it directly.
NO_FINDING_PROMPTS = ("no acute cardiopulmonary abnormality", "there is an acute cardiopulmonary abnormality")
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
KS = (1, 5, 10)


def prompts() -> dict[str, tuple[str, str]]:
    """{observation: (positive prompt, negative prompt)} in cleaned-report style (lower case)."""
    out = {name: (f"there is {PHRASES[name]}", f"no {PHRASES[name]}") for name in PHRASES}
    out["No Finding"] = NO_FINDING_PROMPTS
    return {name: out[name] for name in OBSERVATIONS}


def embed_rows(model: PriorModel, source: PairSource, rows: np.ndarray, batch_size: int = 32,
               desc: str = "embedding") -> dict[str, np.ndarray]:
    """Evaluation embeddings of study rows: pooled encoder features, study and report embeddings."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {"pooled": [], "image": [], "text": []}
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch", leave=False):
        out = model.embed(source.batch(rows[start:start + batch_size]))
        for key in parts:
            parts[key].append(out[key].float().cpu().numpy())
    return {key: np.concatenate(value) for key, value in parts.items()}


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieval(image: np.ndarray, text: np.ndarray, reports: Sequence[str], ks: Sequence[int] = KS) -> dict[str, Any]:
    """Image-to-report Recall@K: study i's report is reports[i] (embedding text[i]); reports of
    identical text count as one report, so a study's rank is among the distinct reports."""
    distinct, first, inverse = np.unique(np.asarray(reports, dtype=object), return_index=True, return_inverse=True)
    sims = _normalise(image) @ _normalise(text[first]).T  # (n, distinct)
    own = sims[np.arange(len(image)), inverse]
    ranks = (sims > own[:, None]).sum(1)  # reports scoring strictly higher
    out: dict[str, Any] = {f"recall@{k}": float((ranks < k).mean()) for k in ks}
    out.update(reports=int(len(distinct)), studies=int(len(image)), median_rank=float(np.median(ranks) + 1),
               **{f"chance@{k}": min(k / len(distinct), 1.0) for k in ks})
    return out


def _auroc(y: np.ndarray, score: np.ndarray) -> float | None:
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else None


def _macro(per_class: dict[str, float | None], counts: dict[str, int], total: int, min_positives: int
           ) -> tuple[float | None, list[str]]:
    used = [k for k, v in per_class.items() if v is not None and min_positives <= counts[k] < total]
    return (float(np.mean([per_class[k] for k in used])) if used else None), used


def zero_shot(model: PriorModel, image: np.ndarray, labels: np.ndarray, min_positives: int) -> dict[str, Any]:
    """AUROC per observation of cos(study, positive prompt) - cos(study, negative prompt)."""
    table = prompts()
    texts = [t for pair in table.values() for t in pair]
    embedded = _normalise(model.embed_texts(texts).float().cpu().numpy())
    sims = _normalise(image) @ embedded.T
    scores = sims[:, 0::2] - sims[:, 1::2]
    per_class = {name: _auroc(labels[:, k], scores[:, k]) for k, name in enumerate(OBSERVATIONS)}
    counts = {name: int(labels[:, k].sum()) for k, name in enumerate(OBSERVATIONS)}
    macro, used = _macro(per_class, counts, len(labels), min_positives)
    return {"macro_auroc": macro, "macro_over": used, "per_class": per_class, "positives": counts,
            "prompts": {name: list(pair) for name, pair in table.items()}}


def linear_probe(features: dict[str, np.ndarray], labels: dict[str, np.ndarray], split: str, min_positives: int,
                 c_grid: Sequence[float] = C_GRID, seed: int = 0) -> dict[str, Any]:
    """Logistic regression per class on `features["train"]`, C by validation macro-AUROC, scored on `split`."""
    scaler = StandardScaler().fit(features["train"])
    x = {name: scaler.transform(value) for name, value in features.items()}
    classes = [k for k in range(labels["train"].shape[1]) if 0 < labels["train"][:, k].sum() < len(labels["train"])]
    best: tuple[float, float, dict[int, LogisticRegression]] | None = None
    for c in c_grid:
        fitted = {k: LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed)
                  .fit(x["train"], labels["train"][:, k]) for k in classes}
        val = [_auroc(labels["val"][:, k], fitted[k].decision_function(x["val"])) for k in classes]
        val = [v for v in val if v is not None]
        score = float(np.mean(val)) if val else -np.inf
        if best is None or score > best[0]:
            best = (score, c, fitted)
    assert best is not None
    val_score, c, fitted = best
    y = labels[split]
    per_class = {name: (_auroc(y[:, k], fitted[k].decision_function(x[split])) if k in fitted else None)
                 for k, name in enumerate(OBSERVATIONS)}
    counts = {name: int(y[:, k].sum()) for k, name in enumerate(OBSERVATIONS)}
    macro, used = _macro(per_class, counts, len(y), min_positives)
    return {"macro_auroc": macro, "macro_over": used, "per_class": per_class, "positives": counts, "C": c,
            "val_macro_auroc": val_score if np.isfinite(val_score) else None, "c_grid": list(c_grid),
            "features": int(features["train"].shape[1])}


def probe(model: PriorModel, source: PairSource, binary: np.ndarray, split: str, min_positives: int = 3,
          batch_size: int = 32) -> dict[str, Any]:
    """Zero-shot, linear-probe and retrieval scores of `model` on `split` (labels: labels.h5 binary)."""
    rows = {name: source.rows(name) for name in dict.fromkeys(("train", "val", split))}
    embedded = {name: embed_rows(model, source, r, batch_size, desc=f"{name} embeddings") for name, r in rows.items()}
    labels = {name: binary[r] for name, r in rows.items()}
    reports = [" . ".join(source.sentences[r]) for r in rows[split]]
    with torch.no_grad():
        return {
            "split": split, "studies": int(len(rows[split])), "min_positives": min_positives,
            "zero_shot": zero_shot(model, embedded[split]["image"], labels[split], min_positives),
            "linear_probe": linear_probe({n: e["pooled"] for n, e in embedded.items()}, labels, split, min_positives),
            "retrieval": retrieval(embedded[split]["image"], embedded[split]["text"], reports),
        }
