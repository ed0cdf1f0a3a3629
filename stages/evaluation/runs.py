"""Run directories (`ARTIFACTS/<dataset>/runs/<name>/`) and the prediction files they hold.

A run directory holds `run.json` ({"dataset", "model", and where known "decoding", "checkpoint",
"oracle", "seed", "adm_enhanced_input", "distilled", "init"}) and `predictions_<split>.csv` (columns id, report). `predictions_for_run` is
the one place that turns a run into predictions; generating them from a checkpoint belongs there.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from stages.core.artifacts import atomic_output, is_up_to_date, write_manifest
from stages.core.config import canonical_dataset
from stages.core.errors import StageError

RUN_FILE = "run.json"
# what a run's recorded decoding passes on to the decoder (block_trigrams follows from the beam size; MBR's
# samples are drawn under the run's seed)
DECODING_FIELDS = ("beam_size", "max_length", "length_penalty", "mbr_samples", "mbr_temperature")
# run.json fields copied into metrics.json: what a reader needs to judge a number
PROTOCOL_FIELDS = ("model", "decoding", "checkpoint", "oracle", "seed", "adm_enhanced_input", "distilled", "init")


def predictions_path(run_dir: Path, split: str) -> Path:
    return Path(run_dir) / f"predictions_{split}.csv"


def read_run(run_dir: Path) -> dict[str, Any]:
    """run.json of a run directory laid out as ARTIFACTS/<dataset>/runs/<name>/, validated."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    try:
        run = json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path} not found: a run directory needs run.json with at least "
                         '{"dataset": ..., "model": ...}') from None
    except ValueError as error:
        raise StageError(f"{path} is not valid JSON ({error}); fix or rewrite it") from None
    missing = [key for key in ("dataset", "model") if not isinstance(run, dict) or key not in run]
    if missing:
        raise StageError(f"{path} lacks {missing}; run.json needs at least "
                         '{"dataset": ..., "model": ...}')
    run["dataset"] = canonical_dataset(str(run["dataset"]))
    if run_dir.resolve().parent.name != "runs" or run_dir.resolve().parent.parent.name != run["dataset"]:
        raise StageError(f"{run_dir} is not laid out as ARTIFACTS/{run['dataset']}/runs/<name>/ "
                         f"(its run.json says dataset {run['dataset']!r}); move it there")
    return run


def run_decoding(run: Mapping[str, Any]) -> dict[str, Any]:
    """The Decoding fields of a run's run.json: the decoding its checkpoint was selected under, which
    evaluate and generate repeat (MBR's samples drawn under the run's seed)."""
    recorded = {k: v for k, v in (run.get("decoding") or {}).items() if k in DECODING_FIELDS}
    return {**recorded, "seed": int(run.get("seed", 0))}


def predictions_for_run(run_dir: Path, split: str) -> dict[str, str]:
    """{study id: generated report} of a run for one split.

    A trained run (model.pt) decodes the split with the decoding its run.json records, once:
    the CSV is kept with a manifest naming the model, and made again when the model changes.
    Runs without a model (baselines, other systems) must already hold predictions_<split>.csv.
    """
    path = predictions_path(run_dir, split)
    model = Path(run_dir) / "model.pt"
    if model.exists():
        run = read_run(run_dir)
        decoding = run_decoding(run)
        options = {"split": split, **decoding}
        if not is_up_to_date(path, options, {"model": model}):
            from stages.generation.decoding import Decoding  # torch: only when needed
            from stages.training.inference import split_predictions

            started = time.time()
            predictions = split_predictions(Path(run_dir), split, Decoding(**decoding))
            write_predictions(path, predictions)
            write_manifest(path, stage="evaluate", dataset=run["dataset"], options=options, inputs={"model": model},
                           counts={"studies": len(predictions)}, started=started)
    if not path.exists():
        raise StageError(f"{path} not found: run {Path(run_dir).name} has no predictions for the {split!r} split; "
                         "write them (columns id,report), e.g. with the model's generate stage")
    return read_predictions(path)


def read_predictions(path: Path, id_column: str = "id", report_column: str = "report") -> dict[str, str]:
    """{study id: report} from a CSV; empty cells stay empty (the scorer names them)."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise StageError(f"cannot read {path} as CSV ({error})") from None
    absent = [c for c in (id_column, report_column) if c not in table.columns]
    if absent:
        raise StageError(f"{path} has no column {absent} (columns: {list(table.columns)}); "
                         "name them with --id-column / --report-column")
    ids = table[id_column].str.strip().tolist()
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise StageError(f"{path}: study ids {duplicates[:10]} appear more than once; give one report per study")
    return dict(zip(ids, table[report_column].tolist()))


def write_predictions(path: Path, predictions: Mapping[str, str]) -> None:
    """id,report CSV in id order, written atomically."""
    ids = sorted(predictions)
    with atomic_output(Path(path)) as tmp:
        pd.DataFrame({"id": ids, "report": [predictions[i] for i in ids]}).to_csv(tmp, index=False)
