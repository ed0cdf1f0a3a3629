"""MIMIC-CXR-JPG: split and metadata CSVs, the `files/` JPEG tree and the free-text reports.

Only paths and report text are held in memory; images are decoded later, a chunk at a time.
Reports are the MIMIC-CXR `files/pXX/pXXXXXXXX/sXXXXXXXX.txt` files (under the root or under
`--reports`), reduced to their FINDINGS section as R2Gen did; studies without one are left out.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pandas as pd
from tqdm import tqdm

from stages.core.errors import StageError
from stages.data.records import StudyRecord

_SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "test": "test"}
_HEADER = re.compile(r"^\s*([A-Z][A-Z /&()-]{2,}):", re.MULTILINE)


def findings_section(text: str) -> str:
    """The FINDINGS section of a MIMIC report, up to the next upper-case 'HEADER:'; '' if none."""
    headers = list(_HEADER.finditer(text))
    for i, header in enumerate(headers):
        if header.group(1).strip() == "FINDINGS":
            end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
            return " ".join(text[header.end():end].split())
    return ""


def _find_csv(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.csv.gz", root / f"{stem}.csv"):
        if candidate.exists():
            return candidate
    raise StageError(f"{root} lacks {stem}.csv(.gz); point --root at the MIMIC-CXR-JPG 2.0.0 folder")


def _report_path(report_roots: list[Path], subject: str, study: str) -> Path | None:
    relative = Path("files") / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
    for base in report_roots:
        if (base / relative).exists():
            return base / relative
    return None


def read_mimic(root: Path, reports: Path | None = None) -> list[StudyRecord]:
    """One record per study with a findings section, its JPEGs ordered by dicom id."""
    root = Path(root)
    split = pd.read_csv(_find_csv(root, "mimic-cxr-2.0.0-split"), dtype=str)
    meta = pd.read_csv(_find_csv(root, "mimic-cxr-2.0.0-metadata"), dtype=str, usecols=["dicom_id", "ViewPosition"])
    missing = {"dicom_id", "study_id", "subject_id", "split"} - set(split.columns)
    if missing:
        raise StageError(f"the MIMIC split CSV under {root} lacks columns {sorted(missing)}")
    table = split.merge(meta, on="dicom_id", how="left").sort_values(["study_id", "dicom_id"])
    report_roots = [p for p in (reports, root, root / "mimic-cxr-reports") if p is not None]
    records, no_report, no_findings = [], 0, 0
    for (subject, study), images in tqdm(table.groupby(["subject_id", "study_id"], sort=False),
                                         desc="mimic reports", unit="study", leave=False):
        report_file = _report_path(report_roots, subject, study)
        if report_file is None:
            no_report += 1
            continue
        findings = findings_section(report_file.read_text(errors="replace"))
        if not findings:
            no_findings += 1
            continue
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        records.append(StudyRecord(
            id=f"s{study}",
            split=_SPLIT_NAMES.get(images["split"].iloc[0], images["split"].iloc[0]),
            report=findings,
            images=[folder / f"{d}.jpg" for d in images["dicom_id"]],
            views=images["ViewPosition"].fillna("").tolist(),
            source=str(report_file),
        ))
    if not records:
        raise StageError(
            f"no MIMIC study with a findings section found under {root} ({no_report} studies had no "
            "report file): put the MIMIC-CXR report .txt files under ROOT/files or pass --reports DIR"
        )
    if no_report:
        click.echo(f"[mimic] {no_report} studies without a report file and {no_findings} without FINDINGS were left out")
    return records
