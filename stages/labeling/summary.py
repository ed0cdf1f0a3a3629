"""Label prevalence per split, as a table and a bar chart, so a person can sanity-check labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stages.core.artifacts import save_figure
from stages.labeling.observations import OBSERVATIONS, POSITIVE, UNCERTAIN


def prevalence(raw: np.ndarray, splits: np.ndarray) -> pd.DataFrame:
    """Percent of studies positive (and uncertain) per observation and split."""
    columns = {}
    for split in dict.fromkeys(splits):
        rows = raw[splits == split]
        columns[f"{split} pos%"] = 100 * (rows == POSITIVE).mean(axis=0)
        columns[f"{split} unc%"] = 100 * (rows == UNCERTAIN).mean(axis=0)
    return pd.DataFrame(columns, index=list(OBSERVATIONS)).round(1)


def plot_prevalence(table: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positive = table[[c for c in table.columns if c.endswith("pos%")]]
    ax = positive.plot.barh(figsize=(8, 6), width=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("studies with a positive mention (%)")
    ax.set_title(title)
    ax.legend([c.replace(" pos%", "") for c in positive.columns], title="split")
    plt.tight_layout()
    save_figure(ax.figure, path, dpi=110)
