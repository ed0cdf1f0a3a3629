"""One comparison table over several runs' metrics files (CSV for analysis, Markdown to read)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from stages.core.artifacts import atomic_output
from stages.evaluation.bootstrap import format_interval
from stages.evaluation.nlg import NLG_METRICS

# (column, path into metrics.json)
_CE_COLUMNS = [("CE micro P", ("ce", "micro", "precision")), ("CE micro R", ("ce", "micro", "recall")),
               ("CE micro F1", ("ce", "micro", "f1")), ("CE macro F1", ("ce", "macro", "f1")),
               ("CE example F1", ("ce", "example", "f1"))]
_INFO_COLUMNS = ("labeler", "decoding", "oracle", "seed")
_INTERVALS = (("BLEU_4", "BLEU-4"), ("CE_micro_F1", "CE micro F1"))


def _get(metrics: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        metrics = metrics[key]
    return metrics


def comparison_table(metrics_by_run: Mapping[str, Mapping[str, Any]],
                     differences: Mapping[str, Mapping[str, Any]] | None = None,
                     baseline: str | None = None) -> pd.DataFrame:
    """One row per run (in the given order): size, NLG, CE, the 95% intervals of BLEU-4 and CE
    micro-F1, with `differences` ({run: paired_differences(run, baseline)}) the paired gaps to
    `baseline`, and the protocol fields that qualify them."""
    rows = []
    for run, metrics in metrics_by_run.items():
        row: dict[str, Any] = {"run": run, "model": metrics.get("model"), "split": metrics["split"],
                               "studies": metrics["n_studies"]}
        row.update({name.replace("_", "-"): metrics["nlg"][name] for name in NLG_METRICS})
        row.update({column: _get(metrics, path) for column, path in _CE_COLUMNS})
        spans = metrics.get("intervals", {})
        row.update({f"{label} 95%": format_interval(spans.get(name)) for name, label in _INTERVALS})
        if differences is not None:
            gaps = differences.get(run)
            for name, label in _INTERVALS:
                row[f"{label} vs {baseline}"] = (
                    "-" if gaps is None else f"{gaps[name]['difference']:+.3f} {format_interval(gaps[name]['interval'], True)}")
        row.update({key: metrics.get(key) for key in _INFO_COLUMNS})
        rows.append(row)
    return pd.DataFrame(rows)


def _numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-style table, scores with 3 decimals, missing values as '-'."""
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "-"
        return f"{value:.3f}" if isinstance(value, float) else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(table.columns) + " |",
             "|" + "|".join("---:" if _numeric(table[c]) else "---" for c in table.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, csv_path: Path, markdown_path: Path) -> None:
    with atomic_output(Path(csv_path)) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_output(Path(markdown_path)) as tmp:
        tmp.write_text(to_markdown(table))
