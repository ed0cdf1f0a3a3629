"""extract-features, kmeans-init and build-knowledge: artifacts, determinism, staleness, the knowledge lookup."""

from __future__ import annotations

import joblib
import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import stages.features.extract as extract
from stages.cli import main
from stages.knowledge.base import build_knowledge
from stages.labeling.observations import NO_FINDING
from stages.models.image_encoders import build_image_encoder
from stages.prototypes.kmeans import init_prototypes
from tests.conftest import write_r2gen


def invoke(*args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A tiny dataset through preprocess -> label -> extract-features -> kmeans-init -> build-knowledge."""
    root = tmp_path_factory.mktemp("chain")
    raw = write_r2gen(root / "raw", splits=("train",) * 12 + ("val", "test"))
    art = root / "art"
    invoke("preprocess", "--dataset", "demo", "--root", raw, "--artifacts", art, "--workers", 1, "--image-size", 48)
    invoke("label", "--dataset", "demo", "--artifacts", art)
    invoke("extract-features", "--dataset", "demo", "--artifacts", art, "--input-size", 64, "--batch-size", 8)
    invoke("kmeans-init", "--dataset", "demo", "--artifacts", art, "--per-group", 2)
    invoke("build-knowledge", "--dataset", "demo", "--artifacts", art, "--m", 2)
    return root


def test_features_shapes(chain):
    with h5py.File(chain / "art/demo/features.h5") as h5:
        assert h5["images/pooled"].shape == (28, 1280) and h5["images/pooled_flip"].shape == (28, 1280)
        assert h5["images/patches"].shape == (28, 4, 1280) and h5["images/patches"].dtype == np.float16
        assert h5["studies/text"].shape == (14, 384)
        assert np.allclose(np.linalg.norm(h5["studies/text"][:], axis=1), 1, atol=1e-4)
        assert h5["images/study"][:].tolist() == [i // 2 for i in range(28)]
        assert not np.allclose(h5["images/pooled"][:], h5["images/pooled_flip"][:])
        assert h5.attrs["image_encoder"] == "efficientnet-lite0" and h5.attrs["text_encoder"] == "minilm"


def test_feature_extraction_resumes_and_is_deterministic(chain, tmp_path, monkeypatch):
    art = tmp_path / "art"
    invoke("preprocess", "--dataset", "demo", "--root", chain / "raw", "--artifacts", art, "--workers", 1,
           "--image-size", 48)
    encode, calls = extract.encode_images, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return encode(*args)

    monkeypatch.setattr(extract, "encode_images", interrupted)
    assert "Aborted" in invoke("extract-features", "--dataset", "demo", "--artifacts", art, "--input-size", 64,
                               "--batch-size", 8, code=1)
    assert (art / "demo/features.h5.partial").exists() and not (art / "demo/features.h5").exists()
    monkeypatch.setattr(extract, "encode_images", encode)
    out = invoke("extract-features", "--dataset", "demo", "--artifacts", art, "--input-size", 64, "--batch-size", 8)
    assert "resuming features.h5.partial: 16 items already written" in out
    with h5py.File(art / "demo/features.h5") as a, h5py.File(chain / "art/demo/features.h5") as b:
        for name in ("images/pooled", "images/pooled_flip", "images/patches", "studies/text"):
            assert np.allclose(a[name][:], b[name][:], atol=1e-5), name


def test_encoder_weights_round_trip_through_a_file(tmp_path):
    default = build_image_encoder().eval()
    torch.save({"state_dict": {"module." + k: v for k, v in default.body.net.state_dict().items()}},
               tmp_path / "w.pth")
    loaded = build_image_encoder("efficientnet-lite0", tmp_path / "w.pth").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(default(x), loaded(x))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit this encoder"):
        build_image_encoder("resnet18", tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="pass --weights FILE"):
        build_image_encoder("densenet121")


def _clusters(seed=0):
    """Three label groups whose features sit around well separated centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 16)) * 5
    binary = np.repeat(np.eye(3, dtype=np.uint8), 30, axis=0)
    visual = centres[binary.argmax(1)] + rng.normal(size=(90, 16))
    text = centres[binary.argmax(1)][:, ::-1] + rng.normal(size=(90, 16))
    return visual, visual + rng.normal(scale=0.1, size=visual.shape), text, binary


def test_prototypes_lie_in_their_own_group():
    visual, flipped, text, binary = _clusters()
    prototypes, members = init_prototypes(visual, flipped, text, binary, ["a", "b", "c"], k=3, per_group=4, seed=0)
    assert prototypes.matrix.shape == (3, 4, 32) and prototypes.counts == [30, 30, 30]
    from stages.prototypes.kmeans import cross_modal

    features = cross_modal(visual, text)
    means = np.stack([features[rows].mean(0) for rows in members])
    for g in range(3):
        for centre in prototypes.matrix[g]:
            assert np.argmin(np.linalg.norm(means - centre, axis=1)) == g
    again, _ = init_prototypes(visual, flipped, text, binary, ["a", "b", "c"], k=3, per_group=4, seed=0)
    assert np.array_equal(again.matrix, prototypes.matrix)


def test_small_and_empty_groups_and_global_grouping():
    visual, flipped, text, binary = _clusters()
    binary = np.concatenate([binary, np.zeros((90, 1), np.uint8)], axis=1)
    binary[:2, 2] = 0
    binary[:1, 2] = 1
    prototypes, _ = init_prototypes(visual, flipped, text, binary, list("abcd"), k=4, per_group=4, seed=0)
    assert "empty group" in prototypes.fallback["d"]
    grouped, members = init_prototypes(visual, flipped, text, binary, list("abcd"), k=2, per_group=2, seed=0)
    assert grouped.groups == ["cluster 0", "cluster 1"] and sum(len(m) for m in members) == 90
    with pytest.raises(ValueError, match="even number"):
        init_prototypes(visual, flipped, text, binary, list("abcd"), k=4, per_group=3, seed=0)


def test_kmeans_init_cli_outputs(chain):
    saved = joblib.load(chain / "art/demo/prototypes.pkl")
    assert saved["matrix"].shape == (14, 2, 1280 + 384) and len(saved["groups"]) == 14
    assert (chain / "art/demo/prototypes_pca.png").exists()


def test_changing_labels_invalidates_prototypes(chain, tmp_path):
    import shutil

    art = tmp_path / "art"
    shutil.copytree(chain / "art", art)
    invoke("label", "--dataset", "demo", "--artifacts", art, "--uncertain-as-positive")
    status = invoke("status", "--dataset", "demo", "--artifacts", art)
    assert "prototypes.pkl" in status and "is stale: its input labels" in status
    assert "wrote" in invoke("kmeans-init", "--dataset", "demo", "--artifacts", art, "--per-group", 2)
    assert "up to date" in invoke("kmeans-init", "--dataset", "demo", "--artifacts", art, "--per-group", 2)


def test_rks_rows_are_exact_rows_and_streaming_changes_nothing():
    rng = np.random.default_rng(1)
    text = rng.normal(size=(50, 8)).astype(np.float32)
    binary = (rng.random((50, 14)) < 0.3).astype(np.uint8)
    train = np.arange(50) < 40
    prior = rng.normal(size=(14, 8))
    ids = [f"s{i}" for i in range(50)]
    kb = build_knowledge(text, ids, train, binary, prior, 3, "positive", "toy", chunk=7)
    whole = build_knowledge(text, ids, train, binary, prior, 3, "positive", "toy", chunk=1000)
    assert np.array_equal(kb.rks_rows, whole.rks_rows) and np.allclose(kb.pks, whole.pks)
    for j in range(14):
        for i, row in enumerate(kb.rks_rows[j]):
            assert np.array_equal(kb.rks[j, i], text[row]) and kb.rks_ids[j][i] == f"s{row}"
            assert train[row] and (binary[row, j] or binary[train, j].sum() < 3)
        scores = (text[train] / np.linalg.norm(text[train], axis=1, keepdims=True)) @ kb.pks[j]
        allowed = binary[train, j] > 0 if binary[train, j].sum() >= 3 else np.ones(train.sum(), bool)
        assert np.isclose(kb.rks_scores[j, 0], scores[allowed].max(), atol=1e-5)


def test_lookup_returns_the_rks_of_exactly_the_predicted_diseases():
    rng = np.random.default_rng(2)
    text = rng.normal(size=(60, 4)).astype(np.float32)
    binary = np.ones((60, 14), np.uint8)
    kb = build_knowledge(text, [str(i) for i in range(60)], np.ones(60, bool), binary, rng.normal(size=(14, 4)),
                         2, "all", "toy")
    labels = np.zeros((2, 14), np.uint8)
    labels[0, [1, 9]] = 1
    vectors, mask = kb.lookup(labels)
    assert vectors.shape == (2, 28, 4) and mask.shape == (2, 28)
    assert np.flatnonzero(mask[0]).tolist() == [2, 3, 18, 19]
    assert np.array_equal(vectors[0, 2:4], kb.rks[1]) and np.array_equal(vectors[0, 18:20], kb.rks[9])
    assert np.flatnonzero(mask[1]).tolist() == [2 * NO_FINDING, 2 * NO_FINDING + 1]


def test_build_knowledge_cli(chain):
    saved = joblib.load(chain / "art/demo/knowledge.pkl")
    assert saved["rks"].shape == (14, 2, 384) and saved["pks"].shape == (14, 384)
    listing = invoke("build-knowledge", "--dataset", "demo", "--artifacts", chain / "art", "--m", 2, "--show")
    assert "up to date" in listing and "## Cardiomegaly" in listing and "`CXR" in listing


def test_build_knowledge_for_an_unprocessed_dataset_says_what_to_run(tmp_path):
    out = invoke("build-knowledge", "--dataset", "mimic_cxr", "--artifacts", tmp_path, code=1)
    assert "features.h5 is missing; build it with: rrg-stage extract-features --dataset mimic" in out
