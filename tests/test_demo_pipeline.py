"""The demo chain through the real CLI: make-demo -> preprocess -> label -> status."""

from __future__ import annotations

import importlib.util
import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from stages.cli import main
from stages.labeling.observations import OBSERVATIONS, POSITIVE, UNCERTAIN
from stages.data.openi import iter_reports_tgz, torchxrayvision_reports
from stages.phantom.demo import read_regions, select_studies

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchxrayvision") is None,
                                reason="the demo's report text ships in torchxrayvision's wheel (make setup installs it)")


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    invoke("make-demo", "--out", root / "raw", "--n-studies", 24, "--test-studies", 6, "--size", 64, "--workers", 1,
           "--preview", root / "preview.png")
    return root


def test_demo_folder_is_r2gen_layout_with_regions(demo):
    annotation = json.loads((demo / "raw" / "annotation.json").read_text())
    entries = [e for split in ("train", "val", "test") for e in annotation[split]]
    assert 20 <= len(entries) <= 28 and all(annotation[s] for s in ("train", "val", "test"))
    assert sum(bool(e["findings"]) for e in entries) >= 0.6 * len(entries)  # abnormal_fraction 0.7
    for entry in entries:
        assert entry["report"] and entry["views"] == ["frontal", "lateral"]
        for path in entry["image_path"]:
            assert Image.open(demo / "raw" / "images" / path).size == (64, 64)
    paths, regions = read_regions(demo / "raw" / "regions.h5")
    assert regions.shape == (2 * len(entries), 14, 64, 64) and regions.dtype == bool
    index = {p: i for i, p in enumerate(paths)}
    for entry in entries:  # every rendered finding has a non-empty true region in the frontal view
        frontal = regions[index[entry["image_path"][0]]]
        for finding in entry["findings"]:
            assert frontal[OBSERVATIONS.index(finding["observation"])].any()
    assert Image.open(demo / "preview.png").size[0] > 64 * 8


def test_test_split_size_leaves_training_and_validation_studies_alone():
    reports = list(iter_reports_tgz(torchxrayvision_reports()))
    proportional = select_studies(reports, 60, None, seed=0, abnormal_fraction=0.7)
    larger = select_studies(reports, 60, None, seed=0, abnormal_fraction=0.7, test_studies=40)
    def ids(studies, split):
        return [s.id for s in studies if s.split == split]
    assert ids(larger, "train") == ids(proportional, "train") and ids(larger, "val") == ids(proportional, "val")
    assert len(ids(larger, "test")) == 40 > len(ids(proportional, "test")) > 0
    assert set(ids(proportional, "test")) & set(ids(larger, "test"))
    abnormal = sum(bool(s.findings) for s in larger if s.split == "test")
    assert abnormal == 28  # abnormal_fraction applies to the larger split too


@pytest.mark.parametrize("size", ["-2", "0"])
def test_make_demo_rejects_a_negative_or_empty_test_split(size, tmp_path):
    result = CliRunner().invoke(main, ["make-demo", "--test-studies", size, "--out", str(tmp_path / "raw")])
    assert result.exit_code == 2 and "--test-studies" in result.output and not (tmp_path / "raw").exists()


def test_demo_is_deterministic(demo, tmp_path):
    invoke("make-demo", "--out", tmp_path / "raw", "--n-studies", 24, "--test-studies", 6, "--size", 64, "--workers", 2)
    first = json.loads((demo / "raw" / "annotation.json").read_text())
    assert json.loads((tmp_path / "raw" / "annotation.json").read_text()) == first
    image = first["train"][0]["image_path"][0]
    assert np.array_equal(np.asarray(Image.open(demo / "raw" / "images" / image)),
                          np.asarray(Image.open(tmp_path / "raw" / "images" / image)))


def test_chain_preprocess_label_status(demo):
    art = demo / "art"
    invoke("preprocess", "--dataset", "demo", "--root", demo / "raw", "--artifacts", art, "--workers", 1)
    out = invoke("label", "--dataset", "demo", "--artifacts", art)
    assert "No Finding" in out and (art / "demo" / "label_prevalence.png").exists()
    annotation = json.loads((demo / "raw" / "annotation.json").read_text())
    rendered = {e["id"]: {f["observation"] for f in e["findings"]} for s in annotation.values() for e in s}
    with h5py.File(art / "demo" / "labels.h5") as labels:
        ids, raw = labels["id"].asstr()[:], labels["raw"][:]
    for study, row in zip(ids, raw):  # the images show exactly what the labeler reads in the report
        labelled = {OBSERVATIONS[j] for j in np.flatnonzero((row == POSITIVE) | (row == UNCERTAIN)) if j < 13}
        assert labelled == rendered[study]
    assert "up to date" in invoke("label", "--dataset", "demo", "--artifacts", art)
    status = invoke("status", "--dataset", "demo", "--artifacts", art)
    assert status.count("[ok]") == 3


def test_make_demo_rerun_is_a_no_op(demo):
    assert "up to date" in invoke("make-demo", "--out", demo / "raw", "--n-studies", 24, "--test-studies", 6, "--size", 64)


def test_label_refuses_a_dataset_that_was_rebuilt(demo, tmp_path):
    art = tmp_path / "art"
    invoke("preprocess", "--dataset", "demo", "--root", demo / "raw", "--artifacts", art, "--workers", 1)
    invoke("label", "--dataset", "demo", "--artifacts", art)
    invoke("preprocess", "--dataset", "demo", "--root", demo / "raw", "--artifacts", art, "--workers", 1,
           "--min-count", 1)
    status = invoke("status", "--dataset", "demo", "--artifacts", art)
    assert "labels.h5" in status and "NOT USABLE" in status and "is stale" in status
    rebuilt = invoke("label", "--dataset", "demo", "--artifacts", art)
    assert "wrote" in rebuilt


def test_help_lists_only_working_stages():
    out = invoke("--help")
    assert {"make-demo", "preprocess", "label", "status"} <= set(out.split())
    for stage in ("make-demo", "preprocess", "label", "status"):
        assert "Usage:" in invoke(stage, "--help")


def test_unknown_dataset_is_a_clear_error():
    result = CliRunner().invoke(main, ["label", "--dataset", "chexpert"])
    assert result.exit_code == 1 and "unknown dataset 'chexpert'" in result.output
