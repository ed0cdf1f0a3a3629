"""`rrg-stage preprocess` end to end on tiny datasets, including every kind of bad input."""

from __future__ import annotations

import json

import h5py
import numpy as np
from click.testing import CliRunner

import stages.data.h5dataset as h5dataset
from stages.data.h5dataset import DatasetFile
from stages.preprocess import command as preprocess
from tests.conftest import write_r2gen


def run(root, artifacts, *extra, dataset="demo"):
    args = ["--dataset", dataset, "--root", str(root), "--artifacts", str(artifacts), "--workers", "1",
            "--chunk", "4", "--image-size", "32", *extra]
    return CliRunner().invoke(preprocess, args, catch_exceptions=False)


def manifest(artifacts, name="dataset.h5"):
    return json.loads((artifacts / "demo" / f"{name}.meta.json").read_text())


def test_preprocess_writes_dataset_and_vocab(r2gen_root, tmp_path):
    result = run(r2gen_root, tmp_path / "art")
    assert result.exit_code == 0, result.output
    with DatasetFile(tmp_path / "art" / "demo" / "dataset.h5") as data:
        assert len(data) == 8 and data.split_indices("train").size == 5
        assert data.reports[0] == "the heart is normal in size . the lungs are clear ."
        assert data.images(0).shape == (2, 32, 32) and data.images(0).dtype == np.uint8
        assert data.token_ids[0, 0] == 0 and data.token_len[0] == len(data.reports[0].split()) + 2
    counts = manifest(tmp_path / "art")["counts"]
    assert counts == {"studies": 8, "train": 5, "val": 1, "test": 2, "images": 16, "bad_images": 0,
                      "dropped_studies": 0, "vocab_size": counts["vocab_size"]}
    tokens = json.loads((tmp_path / "art" / "demo" / "vocab.json").read_text())["tokens"]
    assert "<unk>" in tokens and "." in tokens


def test_rerun_is_a_no_op_and_force_rebuilds(r2gen_root, tmp_path):
    run(r2gen_root, tmp_path / "art")
    again = run(r2gen_root, tmp_path / "art")
    assert "up to date; nothing to do" in again.output
    assert "wrote" in run(r2gen_root, tmp_path / "art", "--force").output
    assert "wrote" in run(r2gen_root, tmp_path / "art", "--min-count", "1").output  # other options: rebuild


def test_bad_images_are_named_skipped_and_counted(r2gen_root, tmp_path):
    (r2gen_root / "images" / "CXR1_IM-0001" / "0.png").write_bytes(b"")
    data = (r2gen_root / "images" / "CXR2_IM-0002" / "1.png").read_bytes()
    (r2gen_root / "images" / "CXR2_IM-0002" / "1.png").write_bytes(data[:60])
    for view in (0, 1):  # a study whose images are all missing is dropped
        (r2gen_root / "images" / "CXR3_IM-0003" / f"{view}.png").unlink()
    result = run(r2gen_root, tmp_path / "art")
    assert result.exit_code == 0, result.output
    assert "CXR1_IM-0001/0.png: empty (0-byte) file" in result.output
    assert "CXR2_IM-0002/1.png: truncated or corrupt" in result.output
    meta = manifest(tmp_path / "art")
    assert meta["counts"]["bad_images"] == 4 and meta["counts"]["images"] == 12
    assert meta["dropped_studies"] == ["CXR3_IM-0003"]
    assert {b["reason"] for b in meta["bad_images"]} >= {"file not found", "empty (0-byte) file"}
    with DatasetFile(tmp_path / "art" / "demo" / "dataset.h5") as data:
        assert len(data) == 7 and "CXR3_IM-0003" not in data.ids
        assert data.images(data.ids.index("CXR1_IM-0001")).shape[0] == 1
        assert all(data.images(i).std() > 0 for i in range(len(data)))  # nothing replaced by black


def test_strict_fails_on_the_first_bad_image_and_leaves_no_artifact(r2gen_root, tmp_path):
    (r2gen_root / "images" / "CXR1_IM-0001" / "0.png").write_bytes(b"")
    result = run(r2gen_root, tmp_path / "art", "--strict")
    assert result.exit_code == 1
    assert "CXR1_IM-0001/0.png: empty (0-byte) file" in result.output and "--strict" in result.output
    assert not (tmp_path / "art" / "demo" / "dataset.h5").exists()


def test_empty_report_is_skipped_or_fatal_under_strict(tmp_path):
    reports = ["Heart normal.", "  "] + ["Lungs clear."] * 6
    root = write_r2gen(tmp_path / "raw", reports=reports)
    result = run(root, tmp_path / "art")
    assert "study CXR1_IM-0001" in result.output and "has an empty report" in result.output
    assert manifest(tmp_path / "art")["counts"]["studies"] == 7
    strict = run(root, tmp_path / "art2", "--strict")
    assert strict.exit_code == 1 and "empty report" in strict.output


def test_duplicate_study_id_is_refused(r2gen_root, tmp_path):
    annotation = json.loads((r2gen_root / "annotation.json").read_text())
    annotation["test"].append(dict(annotation["train"][0], split="test"))
    (r2gen_root / "annotation.json").write_text(json.dumps(annotation))
    result = run(r2gen_root, tmp_path / "art")
    assert result.exit_code == 1 and "duplicate study ids ['CXR0_IM-0000']" in result.output


def test_missing_root_and_bad_annotation(tmp_path):
    result = run(tmp_path / "nowhere", tmp_path / "art")
    assert result.exit_code == 1 and "does not exist" in result.output
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "annotation.json").write_text("{oops")
    result = run(tmp_path / "raw", tmp_path / "art")
    assert result.exit_code == 1 and "annotation.json is not valid JSON (line 1" in result.output


def test_interrupted_run_resumes_and_matches_a_clean_run(r2gen_root, tmp_path, monkeypatch):
    decode = h5dataset.decode_many
    calls = []

    def interrupted(paths, size):
        calls.append(paths)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return decode(paths, size)

    monkeypatch.setattr(h5dataset, "decode_many", interrupted)
    interrupted_run = run(r2gen_root, tmp_path / "art")
    assert interrupted_run.exit_code == 1 and "Aborted" in interrupted_run.output
    out = tmp_path / "art" / "demo"
    assert not (out / "dataset.h5").exists() and (out / "dataset.h5.partial").exists()
    with h5py.File(out / "dataset.h5.partial") as partial:
        assert partial.attrs["n_done"] == 8
    monkeypatch.setattr(h5dataset, "decode_many", decode)
    resumed = run(r2gen_root, tmp_path / "art")
    assert "resuming dataset.h5.partial: 8 items already written" in resumed.output
    run(r2gen_root, tmp_path / "clean")
    with h5py.File(out / "dataset.h5") as a, h5py.File(tmp_path / "clean" / "demo" / "dataset.h5") as b:
        assert np.array_equal(a["images/pixels"][:], b["images/pixels"][:])
        assert a["studies/id"].asstr()[:].tolist() == b["studies/id"].asstr()[:].tolist()


def test_parallel_workers_give_the_same_result(r2gen_root, tmp_path):
    run(r2gen_root, tmp_path / "one")
    args = ["--dataset", "demo", "--root", str(r2gen_root), "--artifacts", str(tmp_path / "two"),
            "--workers", "2", "--chunk", "3", "--image-size", "32"]
    assert CliRunner().invoke(preprocess, args).exit_code == 0
    with h5py.File(tmp_path / "one/demo/dataset.h5") as a, h5py.File(tmp_path / "two/demo/dataset.h5") as b:
        assert np.array_equal(a["images/pixels"][:], b["images/pixels"][:])
