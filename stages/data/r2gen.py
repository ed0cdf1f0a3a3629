"""The R2Gen layout: `annotation.json` with train/val/test lists plus an `images/` folder."""

from __future__ import annotations

import json
from pathlib import Path

from stages.core.errors import StageError
from stages.data.records import SPLITS, StudyRecord

_REQUIRED = ("id", "report", "image_path")


def load_annotation(path: Path) -> dict[str, list[dict]]:
    """Parse and validate an R2Gen annotation file; errors name the file, the place and the fix."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(f"{path} not found: an R2Gen-layout root must contain annotation.json") from None
    except json.JSONDecodeError as error:
        raise StageError(
            f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
            "fix or re-download the annotation file"
        ) from None
    except UnicodeDecodeError:
        raise StageError(f"{path} is not UTF-8 text; is it really annotation.json?") from None
    if not isinstance(data, dict) or not any(split in data for split in SPLITS):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise StageError(
            f"{path} has no train/val/test lists (found {found}); expected R2Gen's format "
            '{"train": [{"id", "report", "image_path": [...]}, ...], "val": [...], "test": [...]}'
        )
    unknown = sorted(set(data) - set(SPLITS))
    if unknown:
        raise StageError(f"{path} has unexpected top-level keys {unknown}; only {list(SPLITS)} are allowed")
    for split, entries in data.items():
        if not isinstance(entries, list):
            raise StageError(f"{path}: '{split}' must be a list of studies")
        for i, entry in enumerate(entries):
            missing = [key for key in _REQUIRED if not isinstance(entry, dict) or key not in entry]
            if missing:
                raise StageError(f"{path}: {split}[{i}] lacks {missing} (each study needs {list(_REQUIRED)})")
            if not isinstance(entry["image_path"], list):
                raise StageError(f"{path}: {split}[{i}] ('{entry['id']}') image_path must be a list")
    return data


def read_r2gen(root: Path, annotation: Path | None = None) -> list[StudyRecord]:
    """Studies of an R2Gen-layout folder; image paths are relative to `root/images`."""
    root = Path(root)
    annotation = Path(annotation) if annotation else root / "annotation.json"
    data = load_annotation(annotation)
    records = []
    for split in SPLITS:
        for entry in data.get(split, []):
            paths = [root / "images" / p for p in entry["image_path"]]
            views = entry.get("views") or [""] * len(paths)
            records.append(StudyRecord(str(entry["id"]), split, str(entry["report"]), paths, list(views),
                                       source=str(annotation)))
    return records
