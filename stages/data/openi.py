"""The raw Open-i (Indiana University) layout: one XML report per study plus PNG images.

The same parser reads the 3,955 report XMLs that ship inside torchxrayvision's wheel, which is
where the demo dataset's real report text comes from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stages.core.errors import StageError
from stages.data.r2gen import load_annotation
from stages.data.records import StudyRecord

REPORTS_TGZ = "data/NLMCXR_reports.tgz"


@dataclass
class OpeniReport:
    study_id: str  # R2Gen's id: the first image id without its final "-NNNN"
    findings: str
    impression: str
    image_ids: list[str]
    source: str


def parse_report(xml: bytes, source: str) -> OpeniReport | None:
    """One report XML; None for a report that lists no image (it cannot form a study)."""
    try:
        tree = ET.fromstring(xml)
    except ET.ParseError as error:
        raise StageError(f"{source} is not a readable Open-i XML report ({error})") from None
    sections = {
        (node.get("Label") or "").upper(): " ".join((node.text or "").split())
        for node in tree.iter("AbstractText")
    }
    image_ids = [node.get("id") for node in tree.iter("parentImage") if node.get("id")]
    if not image_ids:
        return None
    study_id = image_ids[0].rsplit("-", 1)[0]
    return OpeniReport(study_id, sections.get("FINDINGS", ""), sections.get("IMPRESSION", ""), image_ids, source)


def torchxrayvision_reports() -> Path:
    """The Open-i report archive inside the installed torchxrayvision wheel (never imported)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or spec.origin is None:
        raise StageError(
            "the demo needs the Open-i reports shipped in torchxrayvision's wheel: "
            "pip install --no-deps torchxrayvision==1.5.7 (or pass --reports PATH/NLMCXR_reports.tgz)"
        )
    path = Path(spec.origin).parent / REPORTS_TGZ
    if not path.exists():
        raise StageError(f"{path} is missing from the torchxrayvision install; reinstall torchxrayvision==1.5.7")
    return path


def iter_reports_tgz(path: Path) -> Iterator[OpeniReport]:
    """Every report in an NLMCXR_reports.tgz archive, in file-name order."""
    try:
        with tarfile.open(path, "r:gz") as archive:
            members = sorted((m for m in archive.getmembers() if m.name.endswith(".xml")), key=lambda m: m.name)
            for member in members:
                report = parse_report(archive.extractfile(member).read(), f"{path}:{member.name}")
                if report is not None:
                    yield report
    except (tarfile.TarError, OSError) as error:
        raise StageError(f"cannot read the report archive {path} ({error})") from None


def hash_split(study_id: str, fractions: tuple[float, float] = (0.7, 0.1)) -> str:
    """A split that depends on the id alone, so adding studies never moves existing ones."""
    u = int(hashlib.sha256(study_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"


def read_openi(root: Path, split_file: Path | None = None) -> list[StudyRecord]:
    """Studies with a FINDINGS section (R2Gen's convention) from XMLs and PNGs anywhere under root.

    With `split_file` (an R2Gen annotation.json) the published split is used and studies outside
    it are left out; otherwise `hash_split`.
    """
    root = Path(root)
    xmls = sorted(root.rglob("*.xml"))
    if not xmls:
        raise StageError(f"no Open-i XML reports under {root}; expected e.g. {root}/ecgen-radiology/*.xml")
    pngs = {p.stem: p for p in root.rglob("*.png")}
    splits = None
    if split_file:
        splits = {entry["id"]: split for split, entries in load_annotation(split_file).items() for entry in entries}
    records = []
    for xml in xmls:
        report = parse_report(xml.read_bytes(), str(xml))
        if report is None or not report.findings:
            continue
        split = splits.get(report.study_id) if splits is not None else hash_split(report.study_id)
        if split is None:
            continue
        images = [pngs.get(i, root / f"{i}.png") for i in report.image_ids]
        records.append(StudyRecord(report.study_id, split, report.findings, images, [""] * len(images), str(xml)))
    return records
