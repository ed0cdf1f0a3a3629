"""Two baselines every model must beat, as predictions for the val and test studies.

- most-frequent: the most common training report (by cleaned text) for every study; it scores
  well on BLEU for IU X-Ray, where many reports are the same normal text.
- nearest-neighbour: the report of the training study whose visual feature (mean of its views'
  pooled encoder features, from features.h5) is most similar by cosine; a model that does not
  beat retrieval has learned little from the image.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

BASELINES = ("most-frequent", "nearest-neighbour")
EVAL_SPLITS = ("val", "test")


def most_frequent_report(reports: Sequence[str]) -> str:
    """The most common text; a tie goes to the alphabetically first, so input order never matters."""
    counts = Counter(reports)
    return min(counts, key=lambda text: (-counts[text], text))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_neighbours(pool: np.ndarray, queries: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Row of `pool` with the highest cosine similarity to each row of `queries` (first on a tie).

    Queries go in chunks, so a MIMIC-size pool needs only a (chunk, pool) similarity block.
    """
    pool, queries = _unit(pool), _unit(queries)
    best = np.zeros(len(queries), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        best[start:start + chunk] = np.argmax(queries[start:start + chunk] @ pool.T, axis=1)
    return best


def baseline_predictions(ids: Sequence[str], splits: np.ndarray, reports: Sequence[str],
                         visual: np.ndarray) -> dict[str, dict[str, dict[str, str]]]:
    """{baseline: {split: {study id: report}}} for the val and test studies, from the train split."""
    splits = np.asarray(splits)
    train = np.flatnonzero(splits == "train")
    constant = most_frequent_report([reports[i] for i in train])
    out: dict[str, dict[str, dict[str, str]]] = {name: {} for name in BASELINES}
    for split in EVAL_SPLITS:
        rows = np.flatnonzero(splits == split)
        neighbours = train[nearest_neighbours(visual[train], visual[rows])]
        out["most-frequent"][split] = {ids[i]: constant for i in rows}
        out["nearest-neighbour"][split] = {ids[i]: reports[j] for i, j in zip(rows, neighbours)}
    return out
