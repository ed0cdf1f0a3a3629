"""Readers for the R2Gen layout, raw Open-i and MIMIC-CXR-JPG, on small constructed trees."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest
from PIL import Image

from stages.core.errors import StageError
from stages.data.mimic import findings_section, read_mimic
from stages.data.openi import hash_split, parse_report, read_openi
from stages.data.r2gen import load_annotation, read_r2gen
from tests.conftest import radiograph


def test_r2gen_reader(r2gen_root):
    records = read_r2gen(r2gen_root)
    assert [r.split for r in records].count("train") == 5 and len(records) == 8
    assert records[0].images[0] == r2gen_root / "images" / records[0].id / "0.png"


def test_malformed_annotation_names_line_and_column(tmp_path):
    (tmp_path / "annotation.json").write_text('{"train": [\n {"id": 1,,}]}')
    with pytest.raises(StageError, match=r"annotation.json is not valid JSON \(line 2, column"):
        load_annotation(tmp_path / "annotation.json")


def test_annotation_with_wrong_keys(tmp_path):
    (tmp_path / "annotation.json").write_text(json.dumps({"training": []}))
    with pytest.raises(StageError, match=r"no train/val/test lists \(found \['training'\]\)"):
        load_annotation(tmp_path / "annotation.json")
    (tmp_path / "annotation.json").write_text(json.dumps({"train": [{"id": "a", "report": "x"}]}))
    with pytest.raises(StageError, match=r"train\[0\] lacks \['image_path'\]"):
        load_annotation(tmp_path / "annotation.json")


def test_missing_annotation(tmp_path):
    with pytest.raises(StageError, match="must contain annotation.json"):
        read_r2gen(tmp_path)


OPENI_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">Normal chest.</AbstractText>
</Abstract></Article></MedlineCitation>
<parentImage id="CXR{n}_IM-{n:04d}-1001"><caption>PA</caption></parentImage>
<parentImage id="CXR{n}_IM-{n:04d}-2001"><caption>Lateral</caption></parentImage>
</eCitation>"""


def test_openi_reader(tmp_path):
    (tmp_path / "ecgen-radiology").mkdir()
    (tmp_path / "png").mkdir()
    for n, findings in enumerate(["The heart is normal.", "", "Small left effusion."]):
        (tmp_path / "ecgen-radiology" / f"{n}.xml").write_text(OPENI_XML.format(n=n, findings=findings))
        for suffix in ("1001", "2001"):
            Image.fromarray(radiograph()).save(tmp_path / "png" / f"CXR{n}_IM-{n:04d}-{suffix}.png")
    records = read_openi(tmp_path)
    assert [r.id for r in records] == ["CXR0_IM-0000", "CXR2_IM-0002"]  # the one without findings is left out
    assert records[1].report == "Small left effusion."
    assert all(p.exists() for r in records for p in r.images)
    assert records[0].split == hash_split("CXR0_IM-0000")
    split = {"train": [{"id": "CXR2_IM-0002", "report": "", "image_path": []}], "val": [], "test": []}
    (tmp_path / "split.json").write_text(json.dumps(split))
    assert [(r.id, r.split) for r in read_openi(tmp_path, tmp_path / "split.json")] == [("CXR2_IM-0002", "train")]


def test_openi_xml_errors_name_the_file():
    with pytest.raises(StageError, match="broken.xml is not a readable Open-i XML"):
        parse_report(b"<eCitation><unclosed>", "broken.xml")


def test_hash_split_is_stable_and_roughly_70_10_20():
    splits = [hash_split(f"CXR{i}_IM-{i:04d}") for i in range(3000)]
    assert splits == [hash_split(f"CXR{i}_IM-{i:04d}") for i in range(3000)]
    assert 0.65 < splits.count("train") / 3000 < 0.75 and 0.15 < splits.count("test") / 3000 < 0.25


MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ with cough.

 FINDINGS:
 
 The lungs are clear.  There is no pleural effusion or
 pneumothorax.  Heart size is normal.
 
 IMPRESSION:
 
 No acute cardiopulmonary process.
"""


def test_findings_section():
    assert findings_section(MIMIC_REPORT) == (
        "The lungs are clear. There is no pleural effusion or pneumothorax. Heart size is normal.")
    assert findings_section("IMPRESSION: nothing") == ""


def _mimic_tree(root):
    rows = [("d1", "50000001", "10000032", "train", "PA"), ("d2", "50000001", "10000032", "train", "LATERAL"),
            ("d3", "50000002", "10000032", "validate", "AP"), ("d4", "50000003", "11000011", "test", "PA")]
    with gzip.open(root / "mimic-cxr-2.0.0-split.csv.gz", "wt") as f:
        pd.DataFrame([r[:4] for r in rows], columns=["dicom_id", "study_id", "subject_id", "split"]).to_csv(f, index=False)
    pd.DataFrame([(r[0], r[4], 1, 1) for r in rows], columns=["dicom_id", "ViewPosition", "Rows", "Columns"]).to_csv(
        root / "mimic-cxr-2.0.0-metadata.csv", index=False)
    for dicom, study, subject, _, _ in rows:
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(radiograph()).save(folder / f"{dicom}.jpg")
        report = MIMIC_REPORT if study != "50000003" else "IMPRESSION: no findings section here."
        (folder.parent / f"s{study}.txt").write_text(report)
    return root


def test_mimic_reader(tmp_path):
    records = read_mimic(_mimic_tree(tmp_path))
    assert [(r.id, r.split, len(r.images)) for r in records] == [("s50000001", "train", 2), ("s50000002", "val", 1)]
    assert records[0].views == ["PA", "LATERAL"]
    assert all(p.exists() for r in records for p in r.images)


def test_mimic_reader_without_csvs(tmp_path):
    with pytest.raises(StageError, match="lacks mimic-cxr-2.0.0-split.csv"):
        read_mimic(tmp_path)
