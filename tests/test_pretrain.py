"""PRIOR pretraining: the losses on toy cases, the bank's schedule, the stage's files, resuming,
the exported encoder in extract-features, the probe, and refusals of bad input."""

from __future__ import annotations

import json
import math
import shutil

import h5py
import numpy as np
import pytest
import torch

from conftest import TINY as GENERATOR
from conftest import invoke, run_killed, write_r2gen  # tests/ is on sys.path under pytest
from stages.core.artifacts import write_manifest
from stages.features.extract import encode_images
from stages.data.h5dataset import DatasetFile
from stages.pretraining.data import PairSource
from stages.pretraining.losses import assign, gumbel_temperature, info_nce, matched_reconstruction, within_report_nce
from stages.pretraining.model import load_checkpoint
from stages.evaluation.bootstrap import interval
from stages.pretraining.probe import compare_probes, label_ceiling, retrieval
from stages.text.clean import split_sentences

# a model small enough to train in seconds; every size is a real CLI option
TINY = ("--input-size", 64, "--batch-size", 2, "--embed-dim", 16, "--heads", 2, "--prototypes", 8,
        "--decoder-layers", 1, "--spb-start", 0.4, "--reconstruction-start", 0.6, "--epochs", 3)


def test_info_nce_on_toy_cases():
    eye = torch.eye(4)
    assert info_nce(eye, eye, 100.0) < 1e-6  # aligned unit pairs, temperature 0.01: nothing left to learn
    two = torch.eye(2)
    assert info_nce(two, two, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # image (1,0), (0,1) against text (1,0), (1,1)/sqrt2: logits [[1, c], [0, c]], c = 1/sqrt2
    c = 1 / math.sqrt(2)
    image_to_text = (-math.log(math.e / (math.e + math.exp(c))) - math.log(math.exp(c) / (1 + math.exp(c)))) / 2
    text_to_image = (-math.log(math.e / (math.e + 1)) + math.log(2)) / 2
    text = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert info_nce(two, text, 1.0).item() == pytest.approx((image_to_text + text_to_image) / 2, abs=1e-6)
    assert info_nce(two * 3, text * 5, 1.0).item() == pytest.approx((image_to_text + text_to_image) / 2, abs=1e-6)


def test_within_report_nce_ignores_padding_and_single_sentences():
    torch.manual_seed(0)
    s, c = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    value = within_report_nce(s, c, mask, 10.0)
    s2, c2 = s.clone(), c.clone()
    s2[~mask], c2[~mask] = 99.0, -99.0  # what padding holds must not matter
    assert within_report_nce(s2, c2, mask, 10.0).item() == pytest.approx(value.item(), abs=1e-6)
    alone = torch.tensor([[True, False, False]])
    assert within_report_nce(s[:1], c[:1], alone, 10.0).item() == pytest.approx(0.0, abs=1e-6)


def test_gumbel_assignment_sums_to_one_and_its_temperature_anneals():
    torch.manual_seed(0)
    logits = torch.randn(5, 7) * 3
    for sample in (True, False):
        weights = assign(logits, 0.5, sample)
        assert weights.shape == (5, 7) and torch.allclose(weights.sum(-1), torch.ones(5), atol=1e-5)
        assert (weights >= 0).all()
    temps = [gumbel_temperature(p, 1.0, 0.1) for p in np.linspace(0, 1, 11)]
    assert temps[0] == pytest.approx(1.0) and temps[-1] == pytest.approx(0.1)
    assert gumbel_temperature(0.5, 1.0, 0.1) == pytest.approx(math.sqrt(0.1))
    assert all(a > b for a, b in zip(temps, temps[1:]))
    assert gumbel_temperature(-1, 1.0, 0.1) == 1.0 and gumbel_temperature(2, 1.0, 0.1) == pytest.approx(0.1)
    # a colder softmax is closer to one-hot
    assert assign(logits, 0.1, False).max(-1).values.mean() > assign(logits, 1.0, False).max(-1).values.mean()


def test_matched_reconstruction_ignores_query_order():
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    mask = torch.tensor([[True, True, False]])
    predicted = torch.tensor([[[0.0, 1.0], [9.0, 9.0], [1.0, 0.0]]])  # the right sentences, shuffled, one spare
    loss, matches = matched_reconstruction(predicted, target, mask)
    assert loss.item() == pytest.approx(0.0) and sorted(matches[0][0].tolist()) == [0, 2]


def test_sentences_and_retrieval():
    assert split_sentences("the heart is normal . . the lungs are clear .") == ["the heart is normal",
                                                                                  "the lungs are clear"]
    assert split_sentences(" .") == []
    emb = np.eye(4)
    assert retrieval(emb, emb, ["a", "b", "c", "d"], ks=(1,))["recall@1"] == 1.0
    # identical reports are one report: studies 0 and 1 both find "a" first
    found = retrieval(emb[:3], np.stack([emb[0], emb[0], emb[2]]), ["a", "a", "c"], ks=(1, 5))
    assert found["recall@1"] == 1.0 and found["reports"] == 2 and found["chance@5"] == 1.0
    # the label ceiling: studies 0-2 share labels over three distinct reports (R@1 1/3 each), study 3
    # is alone with its labels; study 4 repeats report "a" (and its labels)
    labels = np.asarray([[0, 1], [0, 1], [0, 1], [1, 0], [0, 1]])
    ceiling = label_ceiling(labels, ["a", "b", "c", "d", "a"], ks=(1, 2, 5))
    assert ceiling["recall@1"] == pytest.approx((4 / 3 + 1) / 5)
    assert ceiling["recall@2"] == pytest.approx((4 * 2 / 3 + 1) / 5)
    assert ceiling["recall@5"] == 1.0


def test_bootstrap_intervals_and_compare_probes():
    assert interval(lambda i: 0.5, 10) == [0.5, 0.5]
    hits = np.array([1.0] * 20 + [0.0] * 80)
    low, high = interval(lambda i: float(hits[i].mean()), 100)
    assert 0.1 < low < 0.2 < high < 0.3  # binomial: 0.2 +- 1.96 * 0.04
    assert interval(lambda i: None, 10) is None  # never defined
    # two runs on the same 40 studies; labels of one class, half positive
    labels = [[1] if k % 2 else [0] for k in range(40)]
    perfect = [float(k % 2) for k in range(40)]

    def result(ranks, scores):
        return {"study_ids": [str(k) for k in range(40)], "labels": labels, "retrieval": {"ranks": ranks},
                "linear_probe": {"macro_over": ["Enlarged Cardiomediastinum"],
                                 "scores": {"Enlarged Cardiomediastinum": scores}}}

    a = result([0] * 40, perfect)
    b = result([0] * 20 + [9] * 20, [-s for s in perfect])
    gap = compare_probes(a, b)
    assert gap["recall@5"] == pytest.approx(0.5) and gap["linear_probe"] == pytest.approx(1.0)
    assert gap["recall@5_interval"][0] > 0.3 and gap["linear_probe_interval"] == [1.0, 1.0]
    same = compare_probes(a, a)
    assert same["recall@5_interval"] == [0.0, 0.0] and same["linear_probe"] == 0.0
    with pytest.raises(ValueError, match="different studies"):
        compare_probes(a, {**b, "study_ids": list("x" * 40)})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 studies (8 train, 2 val, 2 test) at 64 px with labels."""
    root = tmp_path_factory.mktemp("pretrain")
    raw = write_r2gen(root / "raw", splits=("train",) * 8 + ("val", "val", "test", "test"))
    art = root / "art"
    invoke("preprocess", "--dataset", "demo", "--root", raw, "--artifacts", art, "--workers", 1, "--image-size", 64)
    invoke("label", "--dataset", "demo", "--artifacts", art)
    return art


def _copy(data, dest):
    ignored = shutil.ignore_patterns("pretrain", "features.h5*", "runs", "adm*", "diagnosis*")
    shutil.copytree(data / "demo", dest / "demo", ignore=ignored)
    return dest


def _pretrain(art, *extra, code=0):
    return invoke("pretrain", "--dataset", "demo", "--artifacts", art, *TINY, *extra, code=code)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _same(a, b):
    wa, wb = _state(a), _state(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_pretrain_writes_a_run_whose_encoder_extract_features_takes(data):
    output = _pretrain(data)
    run = data / "demo" / "pretrain" / "prior"
    for name in ("encoder.pt", "pretrain.pt", "run.json", "log.jsonl", "curves.png", "last.pt", "best.pt",
                 "encoder.pt.meta.json", "pretrain.pt.meta.json"):
        assert (run / name).exists(), name
    manifest = json.loads((run / "encoder.pt.meta.json").read_text())
    assert manifest["options"]["model"]["embed_dim"] == 16 and "dataset" in manifest["inputs"]
    epochs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    epochs = [e for e in epochs if e["event"] == "epoch"]
    # spb from epoch floor(0.4 * 3) = 1 (0-based), reconstructions from floor(0.6 * 3) = 1; the bank's
    # temperature reaches its end value at the last step
    assert [e["spb"] for e in epochs] == [False, True, True]
    assert [e["reconstruction"] for e in epochs] == [False, True, True]
    assert epochs[-1]["gumbel_temperature"] == pytest.approx(0.1) and epochs[1]["gumbel_temperature"] > 0.1
    assert {"train_global", "train_local_text", "train_spb", "train_image", "train_report"} <= set(epochs[-1])
    assert "up to date" in _pretrain(data)
    # the frozen MiniLM is not saved: the checkpoint holds the encoder, heads and decoders only
    assert not any(k.startswith("text.") for k in _state(run / "pretrain.pt"))
    model, info = load_checkpoint(run / "pretrain.pt")
    assert info["best_epoch"] in (1, 2, 3) and model.bank.ready
    invoke("extract-features", "--dataset", "demo", "--artifacts", data, "--input-size", 64,
           "--weights", run / "encoder.pt")
    with h5py.File(data / "demo/dataset.h5") as h5, h5py.File(data / "demo/features.h5") as features:
        pooled, _, patches = encode_images(model.encoder, h5["images/pixels"][:4], 64)
        assert np.allclose(features["images/pooled"][:4], pooled.numpy(), atol=1e-5)
        assert np.allclose(features["images/patches"][:4], patches.numpy(), atol=2e-2)  # stored as float16
    assert "weights" in json.loads((data / "demo/features.h5.meta.json").read_text())["inputs"]
    # the other stages that take --weights load it too
    invoke("train", "--dataset", "demo", "--artifacts", data, *GENERATOR, "--model", "base", "--epochs", 1,
           "--visual", "end-to-end", "--weights", run / "encoder.pt", "--crop", 56)
    invoke("adm-masks", "--dataset", "demo", "--artifacts", data, "--epochs", 1, "--batch-size", 16,
           "--weights", run / "encoder.pt")
    assert "losses: global, local, spb, image, report" in output


def test_probe_scores_a_run(data):
    if not (data / "demo/pretrain/prior/pretrain.pt").exists():
        _pretrain(data)
    output = invoke("probe", "--run", data / "demo/pretrain/prior")
    result = json.loads((data / "demo/pretrain/prior/probe_test.json").read_text())
    assert result["studies"] == 2 and set(result) >= {"zero_shot", "linear_probe", "retrieval"}
    assert result["retrieval"]["reports"] == 2 and "R@5" in output and "from the 14 labels alone" in output
    assert set(result["retrieval"]["label_ceiling"]) == {"recall@1", "recall@5", "recall@10"}
    assert len(result["retrieval"]["ranks"]) == 2 and set(result["retrieval"]["intervals"]) == {"recall@1", "recall@5",
                                                                                               "recall@10"}
    assert result["zero_shot"]["prompts"]["Cardiomegaly"] == ["there is cardiomegaly", "no cardiomegaly"]
    assert "up to date" in invoke("probe", "--dataset", "demo", "--artifacts", data)


def test_killed_mid_epoch_resumes_to_the_same_weights(data, tmp_path):
    """SIGKILLed inside epoch 2, the run continues from last.pt and ends bit-identical to an
    uninterrupted one (so it is also deterministic under a seed)."""
    whole = _copy(data, tmp_path / "whole")
    _pretrain(whole, "--checkpoint-every", 2)
    cut = _copy(data, tmp_path / "cut")
    # 4 steps per epoch; the 7th batch read (epoch 2, step 3; last.pt saved after its step 2) kills it
    killed = run_killed("stages.pretraining.data", "PairSource", 7, "pretrain", "--dataset", "demo",
                        "--artifacts", cut, *TINY, "--checkpoint-every", 2)
    assert killed.returncode == -9, killed.stderr[-2000:]
    run = cut / "demo/pretrain/prior"
    assert not (run / "encoder.pt").exists()
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["state"]
    assert (state["epoch"], state["step"]) == (1, 2)
    assert "resuming after epoch 1, step 2" in _pretrain(cut, "--checkpoint-every", 2)
    for name in ("pretrain.pt", "encoder.pt"):
        assert _same(whole / "demo/pretrain/prior" / name, run / name), name
    seed = _copy(data, tmp_path / "seed")
    _pretrain(seed, "--checkpoint-every", 2, "--seed", 1)
    assert not _same(whole / "demo/pretrain/prior/pretrain.pt", seed / "demo/pretrain/prior/pretrain.pt")
    # an invalid option is refused before anything is touched: a typo never replaces a finished run
    assert "--select" in _pretrain(seed, "--checkpoint-every", 2, "--seed", 1, "--select", "recall", code=2)
    assert (seed / "demo/pretrain/prior/encoder.pt").exists()
    # other options for a finished run: it is pretrained again and replaced
    before = shutil.copy(seed / "demo/pretrain/prior/pretrain.pt", tmp_path / "before.pt")
    output = _pretrain(seed, "--checkpoint-every", 2, "--seed", 1, "--lr", 0.01)
    assert "finished run with other options" in output and "resuming" not in output
    assert not _same(before, seed / "demo/pretrain/prior/pretrain.pt")
    # other options for an unfinished run: its last.pt is refused, never lost or mixed in
    for name in ("pretrain.pt", "encoder.pt"):
        (run / name).unlink()
    assert "other options or inputs" in _pretrain(cut, "--checkpoint-every", 2, "--lr", 0.01, code=1)
    assert (run / "last.pt").exists()


def _extra(root, splits, prefix, size=64):
    """Another dataset's artifact folder (its own dataset.h5) for --extra-data."""
    raw = write_r2gen(root / "raw", splits=splits, prefix=prefix)
    invoke("preprocess", "--dataset", "demo", "--root", raw, "--artifacts", root / "art", "--workers", 1,
           "--image-size", size)
    return root / "art/demo"


def test_extra_pairs_join_the_training_split_only(data, tmp_path):
    # 7 training studies, and a val and a test study of its own, which are not used
    extra = _extra(tmp_path / "ok", ("train",) * 7 + ("val", "test"), "EXT")
    source = PairSource(data / "demo/dataset.h5", extra=extra / "dataset.h5")
    try:
        own = source.rows("train")
        assert len(own) == 8 + 7 and (own[:8] < source.offset).all() and (own[8:] >= source.offset).all()
        assert len(source.rows("val")) == 2 and (source.rows("val") < source.offset).all()
        rows = np.asarray([own[8], own[0], own[9]])  # mixed order: each study keeps its own pixels
        batch = source.batch(rows)
        with DatasetFile(extra / "dataset.h5") as other, DatasetFile(data / "demo/dataset.h5") as main:
            assert np.array_equal((batch.pixels[0] * 255).round().numpy().astype(np.uint8), other.images(0))
            assert np.array_equal((batch.pixels[1] * 255).round().numpy().astype(np.uint8), main.images(0))
            assert batch.sentences[2] == split_sentences(other.reports[1])
        assert source.check()["extra_train"] == 7
    finally:
        source.close()
    # studies this dataset already trains on are read once
    held = _extra(tmp_path / "again", ("train",) * 8, "CXR")
    again = PairSource(data / "demo/dataset.h5", extra=held / "dataset.h5")
    assert again.check()["extra_train"] == 0
    again.close()
    art = _copy(data, tmp_path / "art")
    output = _pretrain(art, "--epochs", 1, "--extra-data", extra)
    assert "15 training pairs (7 from" in output
    run = json.loads((art / "demo/pretrain/prior/run.json").read_text())
    assert run["extra_data"]["train_pairs"] == 7 and run["pairs"]["train"] == 15
    assert "extra_dataset" in json.loads((art / "demo/pretrain/prior/encoder.pt.meta.json").read_text())["inputs"]
    # validation and test studies of this dataset among the extra training studies would leak
    leaky = _extra(tmp_path / "leaky", ("train",) * 12, "CXR")
    message = _pretrain(art, "--epochs", 1, "--extra-data", leaky, code=1)
    assert "4 training studies of the extra dataset" in message and "CXR8_IM-0008" in message
    smaller = _extra(tmp_path / "small", ("train",) * 3, "EXT", size=48)
    assert "--image-size 64" in _pretrain(art, "--epochs", 1, "--extra-data", smaller, code=1)
    assert "dataset.h5 is missing" in _pretrain(art, "--extra-data", tmp_path, code=1)


def test_pretrain_refuses_bad_input(data, tmp_path):
    missing = invoke("pretrain", "--dataset", "demo", "--artifacts", tmp_path / "none", *TINY, code=1)
    assert "dataset.h5 is missing" in missing and "rrg-stage preprocess" in missing
    assert "--text-layers" in _pretrain(data, "--text-layers", 9, code=2)
    assert "alignment" in _pretrain(data, "--global-weight", 0, "--no-local", "--no-report-reconstruction", code=2)
    # a dataset.h5 whose studies have no report text (e.g. images only) cannot be pretrained on
    art = _copy(data, tmp_path / "textless")
    dataset = art / "demo/dataset.h5"
    with h5py.File(dataset, "a") as h5:
        h5["studies/clean"][...] = np.asarray([" ."] * len(h5["studies/clean"]), dtype=object)
    write_manifest(dataset, stage="preprocess", dataset="demo", options={}, inputs={}, counts={}, started=0)
    message = _pretrain(art, code=1)
    assert str(dataset) in message and "no report text" in message
