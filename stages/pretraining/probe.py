"""What a pretrained encoder is worth downstream, on one split (PRIOR's evaluation, offline).

- zero-shot classification: for each of the 14 observations, a positive and a negative prompt
  ("there is cardiomegaly" / "no cardiomegaly") go through the text side; a study's score is its
  embedding's cosine with the positive minus that with the negative; AUROC per class;
- linear probe: scikit-learn logistic regression per class on the frozen encoder's pooled
  features (mean over a study's views), standardised on train, fit on train, C chosen on
  validation macro-AUROC, scored on the split;
- image-to-report retrieval: each study ranks the split's reports by cosine; Recall@K counts a
  hit when a report of identical text ranks within K (identical reports are one report). Beside
  it, the label ceiling: the expected Recall@K of a ranking that knows each study's 14 labels
  exactly and nothing else (reports with the study's labels first, in random order), which is
  what an encoder could reach from the findings alone.
Labels are labels.h5's binary labels. Macro-AUROC averages the classes with at least
`min_positives` positives and some negatives in the split. Each score carries a 95% bootstrap
interval over the split's studies, and the per-study values (retrieval ranks, probe scores) are
kept so that two runs can be compared on the same resamples (bench/prior.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from stages.adm.classifier import auroc, class_aurocs
from stages.evaluation.bootstrap import interval
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
               **{f"chance@{k}": min(k / len(distinct), 1.0) for k in ks},
               intervals={f"recall@{k}": interval(lambda i, k=k: float((ranks[i] < k).mean()), len(ranks))
                          for k in ks},
               ranks=ranks.tolist())
    return out


def label_ceiling(labels: np.ndarray, reports: Sequence[str], ks: Sequence[int] = KS) -> dict[str, float]:
    """Expected Recall@K when each study's distinct reports are ranked by their labels alone: the
    reports labelled exactly as the study come first, in random order (identical text, identical labels)."""
    _, first, inverse = np.unique(np.asarray(reports, dtype=object), return_index=True, return_inverse=True)
    report_labels = labels[first]
    tied = (report_labels[None, :, :] == labels[:, None, :]).all(-1).sum(1)  # (n,) reports as good as its own
    return {f"recall@{k}": float(np.minimum(1.0, k / tied).mean()) for k in ks}


def compare_probes(a: dict[str, Any], b: dict[str, Any], k: int = 5) -> dict[str, Any]:
    """Probe results a - b on the same studies: Recall@k and linear-probe macro-AUROC (over the
    classes both averaged), each with a 95% bootstrap interval that resamples the same studies for both."""
    if a["study_ids"] != b["study_ids"]:
        raise ValueError("the two probe results score different studies; probe both runs on the same split")
    hits_a, hits_b = (np.asarray(r["retrieval"]["ranks"]) < k for r in (a, b))
    labels = np.asarray(a["labels"])
    names = [n for n in a["linear_probe"]["macro_over"] if n in b["linear_probe"]["macro_over"]]
    columns = [OBSERVATIONS.index(n) for n in names]
    score_a, score_b = (np.stack([np.asarray(r["linear_probe"]["scores"][n]) for n in names], axis=1)
                        for r in (a, b))

    def probe_gap(i: np.ndarray) -> float | None:
        first, second = macro_auroc(labels[i][:, columns], score_a[i]), macro_auroc(labels[i][:, columns], score_b[i])
        return None if first is None or second is None else first - second

    everything = np.arange(len(labels))
    return {f"recall@{k}": float(hits_a.mean() - hits_b.mean()),
            f"recall@{k}_interval": interval(lambda i: float(hits_a[i].mean() - hits_b[i].mean()), len(labels)),
            "linear_probe": probe_gap(everything), "linear_probe_interval": interval(probe_gap, len(labels)),
            "classes": names}


def macro_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Mean AUROC over the columns of (n, C) labels and scores; None when a column lacks positives or negatives."""
    values = class_aurocs(labels, scores)
    return None if any(v is None for v in values) else float(np.mean(values))


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
    per_class = {name: auroc(labels[:, k], scores[:, k]) for k, name in enumerate(OBSERVATIONS)}
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
        val = [auroc(labels["val"][:, k], fitted[k].decision_function(x["val"])) for k in classes]
        val = [v for v in val if v is not None]
        score = float(np.mean(val)) if val else -np.inf
        if best is None or score > best[0]:
            best = (score, c, fitted)
    assert best is not None
    val_score, c, fitted = best
    y = labels[split]
    scores = {k: fitted[k].decision_function(x[split]) for k in fitted}
    per_class = {name: (auroc(y[:, k], scores[k]) if k in scores else None) for k, name in enumerate(OBSERVATIONS)}
    counts = {name: int(y[:, k].sum()) for k, name in enumerate(OBSERVATIONS)}
    macro, used = _macro(per_class, counts, len(y), min_positives)
    columns = [OBSERVATIONS.index(name) for name in used]
    used_scores = np.stack([scores[k] for k in columns], axis=1) if columns else np.zeros((len(y), 0))
    spread = interval(lambda i: macro_auroc(y[i][:, columns], used_scores[i]), len(y)) if columns else None
    return {"macro_auroc": macro, "macro_interval": spread, "macro_over": used, "per_class": per_class,
            "positives": counts, "scores": {OBSERVATIONS[k]: v.tolist() for k, v in scores.items()}, "C": c,
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
            "study_ids": [source.data.ids[r] for r in rows[split]],
            "labels": labels[split].astype(int).tolist(),
            "zero_shot": zero_shot(model, embedded[split]["image"], labels[split], min_positives),
            "linear_probe": linear_probe({n: e["pooled"] for n, e in embedded.items()}, labels, split, min_positives),
            "retrieval": {**retrieval(embedded[split]["image"], embedded[split]["text"], reports),
                          "label_ceiling": label_ceiling(labels[split], reports)},
        }
