"""Atomic writes, manifests and the checks that keep missing, stale or foreign inputs out."""

from __future__ import annotations

import json

import pytest

from stages.core import artifacts
from stages.core.errors import StageError


def _artifact(path, text, dataset="demo", inputs=None, options=None):
    with artifacts.atomic_output(path) as tmp:
        tmp.write_text(text)
    artifacts.write_manifest(path, stage="test", dataset=dataset, options=options or {}, inputs=inputs or {},
                             counts={"rows": 1}, started=0.0)
    return path


def test_atomic_output_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "labels.h5"
    with pytest.raises(RuntimeError):
        with artifacts.atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-stage")
    assert list(tmp_path.iterdir()) == []


def test_replacing_an_artifact_drops_its_old_manifest_first(tmp_path):
    target = _artifact(tmp_path / "a.h5", "v1")
    with pytest.raises(RuntimeError):
        with artifacts.atomic_output(target) as tmp:
            tmp.write_text("v2")
            raise RuntimeError
    assert target.read_text() == "v1" and artifacts.read_manifest(target) is not None
    with artifacts.atomic_output(target) as tmp:
        tmp.write_text("v2")
    assert target.read_text() == "v2" and artifacts.read_manifest(target) is None


def test_manifest_records_checksums_options_and_inputs(tmp_path):
    upstream = _artifact(tmp_path / "dataset.h5", "data")
    down = _artifact(tmp_path / "labels.h5", "labels", inputs={"dataset": upstream}, options={"k": 14})
    manifest = json.loads((tmp_path / "labels.h5.meta.json").read_text())
    assert manifest["options"] == {"k": 14}
    assert manifest["inputs"]["dataset"]["sha256"] == artifacts.checksum(upstream)
    assert manifest["sha256"] == artifacts.checksum(down)
    assert {"stage", "dataset", "counts", "package_version", "created", "duration_s", "command"} <= set(manifest)


def test_missing_input_names_the_command_that_builds_it(tmp_path):
    with pytest.raises(StageError, match=r"dataset.h5 is missing; build it with: rrg-stage preprocess --dataset demo"):
        artifacts.check_input(tmp_path / "dataset.h5", "demo")


def test_input_without_manifest_is_refused(tmp_path):
    (tmp_path / "dataset.h5").write_text("written by hand")
    with pytest.raises(StageError, match="no readable manifest"):
        artifacts.check_input(tmp_path / "dataset.h5", "demo")


def test_input_of_another_dataset_is_refused(tmp_path):
    path = _artifact(tmp_path / "dataset.h5", "x", dataset="iu_xray")
    with pytest.raises(StageError, match="built for dataset 'iu_xray', not 'demo'"):
        artifacts.check_input(path, "demo")


def test_input_changed_after_its_manifest_is_refused(tmp_path):
    path = _artifact(tmp_path / "dataset.h5", "x")
    path.write_text("something else")
    with pytest.raises(StageError, match="changed after its manifest"):
        artifacts.check_input(path, "demo")


def test_stale_input_is_refused_and_rebuilding_upstream_invalidates_downstream(tmp_path):
    upstream = _artifact(tmp_path / "dataset.h5", "v1")
    labels = _artifact(tmp_path / "labels.h5", "labels", inputs={"dataset": upstream}, options={"a": 1})
    assert artifacts.check_input(labels, "demo")["stage"] == "test"
    assert artifacts.is_up_to_date(labels, {"a": 1}, {"dataset": upstream})
    assert not artifacts.is_up_to_date(labels, {"a": 2}, {"dataset": upstream})
    _artifact(upstream, "v2")
    assert not artifacts.is_up_to_date(labels, {"a": 1}, {"dataset": upstream})
    with pytest.raises(StageError, match="labels.h5 is stale: its input dataset"):
        artifacts.check_input(labels, "demo")


def test_directory_checksum_follows_content(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_text("1")
    before = artifacts.checksum(tmp_path / "d")
    (tmp_path / "d" / "a").write_text("2")
    assert artifacts.checksum(tmp_path / "d") != before


def test_raw_inputs_are_recorded_by_absolute_path_and_not_rechecked_downstream(tmp_path):
    raw = tmp_path / "raw.json"
    raw.write_text("{}")
    built = _artifact(tmp_path / "art" / "dataset.h5", "data", inputs={"annotation": raw})
    record = artifacts.read_manifest(built)["inputs"]["annotation"]
    assert record == {"path": str(raw.resolve()), "sha256": artifacts.checksum(raw), "artifact": False}
    raw.write_text('{"changed": 1}')  # the stage that reads it (preprocess) notices; consumers of dataset.h5 need not
    assert artifacts.check_input(built, "demo")
    assert not artifacts.is_up_to_date(built, {}, {"annotation": raw})


def test_artifact_folders_can_be_moved(tmp_path):
    upstream = _artifact(tmp_path / "a" / "dataset.h5", "v1")
    _artifact(tmp_path / "a" / "labels.h5", "labels", inputs={"dataset": upstream})
    (tmp_path / "a").rename(tmp_path / "b")
    assert artifacts.check_input(tmp_path / "b" / "labels.h5", "demo")["stage"] == "test"


def test_config_layers_dataset_table_then_method_reference_then_method_table_then_cli(tmp_path, monkeypatch):
    from stages.core import config

    (tmp_path / "demo.toml").write_text('[train]\nlr = 1e-3\nd_model = 256\nepochs = 5\n\n'
                                        '[train.ekagen]\nlayers = 3\n')
    monkeypatch.setenv("RRG_PIPELINES", str(tmp_path))
    config.dataset_config.cache_clear()
    try:
        reference = {"lr": 1e-4, "layers": 6, "d_model": 512}
        options = config.resolve("demo", "train", {"epochs": 7, "lr": None}, variant="ekagen", fallback=reference)
        # the dataset-wide lr is meant for other methods: the method's reference wins over it, the
        # method's own table over the reference, the command line over everything
        assert options == {"lr": 1e-4, "d_model": 512, "epochs": 7, "layers": 3}
        assert config.resolve("demo", "train", {"lr": 2e-4}, variant="ekagen", fallback=reference)["lr"] == 2e-4
        assert config.resolve("demo", "train", {}, variant="base")["lr"] == 1e-3
    finally:
        config.dataset_config.cache_clear()
