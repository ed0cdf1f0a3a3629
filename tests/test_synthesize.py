"""CXR-IRGen synthesis: the noise schedule and training target on toy cases, DDIM's determinism,
reference images, and the stages: train-vision (and its resuming), generate (a dataset that passes
preprocessing's validation), train --extra-data, evaluate, and refusals of bad input."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy import linalg

from conftest import copy_chain, invoke, train, write_r2gen  # tests/ is on sys.path under pytest
from stages.adm.masks import read_masks
from stages.core.artifacts import check_input, read_manifest
from stages.core.checkpoints import extends
from stages.core.errors import StageError
from stages.data.h5dataset import DatasetFile
from stages.data.r2gen import read_r2gen
from stages.preprocess import check_records
from stages.labeling.observations import OBSERVATIONS
from stages.synthesis.evaluation import MIN_POSITIVES, contrasts
from stages.synthesis.prompts import PromptBank, PromptPlan, Prompts, plan_prompts
from stages.synthesis.quality import finding_contrast, frechet_distance, save_contrasts
from stages.synthesis.schedule import NoiseSchedule
from stages.synthesis.vision import (VisionConfig, VisionModel, VisionOptions, VisionTrainer, balanced_weights,
                                    finding_weights, load_vision, sample)
from stages.text.vocab import Vocabulary
from stages.training.data import MixedSource, StudySource

pytestmark = pytest.mark.usefixtures("one_thread")

# a vision module small enough to train in a second on 64-px chain images; every size is a CLI option
VISION = ("--resolution", 16, "--width", 8, "--mults", "1,2", "--attention", "", "--heads", 2, "--batch-size", 4,
          "--timesteps", 50, "--log-every", 1)
SAMPLING = ("--guidance", 2.0, "--ddim-steps", 3, "--batch-size", 8)


def tiny_model(target: str = "eps", seed: int = 0) -> VisionModel:
    torch.manual_seed(seed)
    model = VisionModel(VisionConfig(resolution=8, width=8, mults="1,2", attention="", heads=2, timesteps=20,
                                     target=target, text_dim=6, image_dim=5, views=2))
    with torch.no_grad():  # zero-initialised layers would make the untrained model ignore its inputs
        for name, p in model.unet.named_parameters():
            if name.startswith("head") or ".conv2." in name:
                p.normal_(0, 0.02)
    return model.eval()


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedule_keeps_less_signal_at_every_step(kind):
    schedule = NoiseSchedule(kind, 1000)
    abar = schedule.alphas_cumprod
    assert (abar[1:] < abar[:-1]).all() and abar[0] > 0.99 and abar[-1] < 1e-3 and (abar > 0).all()
    manual = torch.ones((), dtype=torch.float64)
    for t in range(10):  # the cumulative product, by hand
        manual = manual * (1 - schedule.betas[t])
    assert abar[9].item() == pytest.approx(manual.item(), rel=1e-12)


def test_cosine_schedule_keeps_more_signal_mid_way_than_linear():
    assert NoiseSchedule("cosine").alphas_cumprod[500] > 2 * NoiseSchedule("linear").alphas_cumprod[500]


@pytest.mark.parametrize("target", ["eps", "v"])
def test_q_sample_target_and_split_on_a_toy_case(target):
    schedule = NoiseSchedule("cosine", 100, target)
    x0 = torch.tensor([[[[0.5, -1.0]]]]).repeat(3, 1, 1, 1)
    noise = torch.tensor([[[[1.0, 2.0]]]]).repeat(3, 1, 1, 1)
    t = torch.tensor([0, 40, 99])
    x_t = schedule.q_sample(x0, t, noise)
    for i, step in enumerate(t.tolist()):
        a = schedule.alphas_cumprod[step].item()
        expected = [math.sqrt(a) * 0.5 + math.sqrt(1 - a), -math.sqrt(a) + 2 * math.sqrt(1 - a)]
        assert x_t[i].flatten().tolist() == pytest.approx(expected, abs=1e-6)
    # the target of a perfect prediction gives x_0 and the noise back
    recovered_x0, recovered_eps = schedule.split(schedule.training_target(x0, t, noise), x_t, t)
    assert torch.allclose(recovered_x0, x0, atol=1e-4) and torch.allclose(recovered_eps, noise, atol=1e-4)


@pytest.mark.parametrize("target", ["eps", "v"])
def test_loss_is_zero_for_a_perfect_predictor_and_not_for_a_blind_one(target):
    model = tiny_model(target).train()
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    prompts = Prompts(torch.randn(4, 6), torch.randn(4, 5), torch.tensor([0, 1, 0, 1]))
    schedule = model.schedule

    def perfect(x_t, t, cond):  # knows x_0, so it can say what the noise was
        abar = schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        noise = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
        return schedule.training_target(x0, t, noise)

    model.unet.forward = perfect
    assert model.loss(x0, prompts, torch.Generator().manual_seed(0)).item() < 1e-8
    model.unet.forward = lambda x_t, t, cond: torch.zeros_like(x_t)
    assert model.loss(x0, prompts, torch.Generator().manual_seed(0)).item() > 0.05


def test_ddim_with_a_perfect_predictor_lands_on_the_image():
    schedule = NoiseSchedule("cosine", 200)
    x0 = torch.rand(2, 1, 4, 4) * 1.6 - 0.8

    def perfect(x_t, t):
        abar = schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    out = schedule.ddim_sample(perfect, torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1)), 10)
    assert torch.allclose(out, x0, atol=1e-4)
    times = schedule.ddim_timesteps(10)
    assert times == list(range(180, -1, -20))  # leading spacing: T - 1, where sqrt(abar) ~ 0, is left out


def test_sampling_is_deterministic_under_a_seed_and_independent_of_batching():
    model = tiny_model("v")  # an untrained v-predictor stays inside [-1, 1]; an eps one saturates
    prompts = Prompts(torch.randn(3, 6), torch.randn(3, 5), torch.tensor([0, 1, 1]))
    first = sample(model, prompts, guidance=2.0, steps=4, seed=5, batch_size=3)
    assert first.shape == (3, 1, 8, 8) and first.abs().max() <= 1 + 1e-6 and (first.abs() < 0.99).float().mean() > 0.5
    assert torch.equal(first, sample(model, prompts, guidance=2.0, steps=4, seed=5, batch_size=3))
    assert torch.allclose(first, sample(model, prompts, guidance=2.0, steps=4, seed=5, batch_size=1), atol=1e-5)
    assert not torch.allclose(first, sample(model, prompts, guidance=2.0, steps=4, seed=6, batch_size=3))
    assert not torch.allclose(first, sample(model, prompts, guidance=0.0, steps=4, seed=5, batch_size=3))


def test_balanced_weights_favour_the_rarest_finding_of_each_image():
    # columns: a common finding (3 images), a rare one (1 image); the last image has no positive label
    labels = np.array([[1, 0], [1, 0], [1, 1], [0, 0]])
    assert np.allclose(balanced_weights(labels, 0.0), 0.25)
    weights = balanced_weights(labels, 1.0)
    assert weights.sum() == pytest.approx(1.0)
    # the image with the rare finding counts as rare (4/1), the others as common (4/3), unlabelled too
    assert weights[2] / weights[0] == pytest.approx(3.0) and weights[3] == pytest.approx(weights[0])
    assert balanced_weights(labels, 0.5)[2] / balanced_weights(labels, 0.5)[0] == pytest.approx(3.0 ** 0.5)


def test_frechet_distance_is_zero_for_the_same_set_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + [2.0, 0, 0]) == pytest.approx(4.0, abs=1e-6)
    assert frechet_distance(a, rng.normal(size=(200, 3)) * 3) > frechet_distance(a, rng.normal(size=(200, 3)))
    for n in (4, 40):  # fewer and more samples than dimensions: FID's formula with a matrix square root
        x, y = rng.normal(size=(n, 6)), rng.normal(size=(n + 3, 6)) * 2 + 1
        cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
        formula = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(cx + cy - 2 * linalg.sqrtm(cx @ cy).real)
        assert frechet_distance(x, y) == pytest.approx(formula, rel=1e-6)


def test_a_finding_contrast_is_where_the_images_with_it_differ(tmp_path):
    images = np.zeros((6, 8, 8))
    positive = np.array([1, 1, 0, 0, 0, 1], dtype=bool)
    images[positive, 6:, :2] = 30.0  # fluid in one lower corner of the images with the finding
    contrast = finding_contrast(images, positive)
    assert contrast[6:, :2] == pytest.approx(np.full((2, 2), 30.0)) and np.abs(contrast).sum() == 30.0 * 4
    assert finding_contrast(images, np.ones(6, dtype=bool)) is None and finding_contrast(images, np.zeros(6)) is None
    save_contrasts(tmp_path / "c.png", {"Pleural Effusion": [("real", contrast), ("generated", -contrast)]}, "t")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_contrast_maps_pair_real_and_generated_images_per_view(tmp_path):
    studies = np.arange(4)
    plan = PromptPlan(studies, np.repeat(studies, 2), np.tile([0, 1], 4), np.arange(8), np.arange(8))
    targets = np.zeros((4, len(OBSERVATIONS)))
    targets[:3, OBSERVATIONS.index("Cardiomegaly")] = 1  # three positive prompts, one negative
    real = np.zeros((8, 8, 8))
    real[:6, 2:6, 2:6] = 40.0  # a larger heart in both views of the positives
    generated = real.copy()
    generated[6:, :, :] = 5.0  # and a brighter negative: the maps still match, shifted
    correlation = contrasts(plan, ["frontal", "lateral"], targets, real, generated, tmp_path / "c.png", "t")
    assert correlation == {"Cardiomegaly": {"frontal": pytest.approx(1.0), "lateral": pytest.approx(1.0)}}
    assert (tmp_path / "c.png").exists()
    generated[:6] = 0.0
    generated[:6, 6:, :2] = 40.0  # the finding drawn in the wrong place
    assert contrasts(plan, ["frontal", "lateral"], targets, real, generated, tmp_path / "d.png", "t")[
        "Cardiomegaly"]["frontal"] < 0
    generated[:] = 0.0  # or left out: a flat map, no correlation
    assert contrasts(plan, ["frontal", "lateral"], targets, real, generated, tmp_path / "e.png", "t")[
        "Cardiomegaly"] == {"frontal": None, "lateral": None}


def test_references_share_the_view_and_labels_and_never_the_study(chain):
    art = chain / "demo"
    bank = PromptBank(art / "dataset.h5", art / "labels.h5", art / "features.h5")
    try:
        rows = bank.image_rows("train")
        studies = bank.image_study[rows]
        refs = bank.references(bank.labels[studies], bank.view[rows], studies, np.random.default_rng(0))
        assert (bank.view[refs] == bank.view[rows]).all() and (bank.image_study[refs] != studies).all()
        assert (bank.data.splits[bank.image_study[refs]] == "train").all()
        same = (bank.labels[bank.image_study[refs]] == bank.labels[studies]).all(axis=1)
        for i in np.flatnonzero(~same):  # a differing reference only where no other study has these labels
            others = (bank.labels[bank.image_study[rows]] == bank.labels[studies[i]]).all(axis=1)
            assert not (others & (bank.image_study[rows] != studies[i]) & (bank.view[rows] == bank.view[rows[i]])).any()
        plan = plan_prompts(bank, "test", 5, seed=0)
        assert len(plan.studies) == 5 and (bank.data.splits[plan.studies] == "test").all()
        assert (bank.image_study[plan.real_rows] == plan.studies[plan.image_study]).all()
    finally:
        bank.close()


@pytest.fixture(scope="module")
def synth(chain, tmp_path_factory) -> Path:
    """The chain with a tiny vision module (synthesize/vision/) trained for 4 steps."""
    art = copy_chain(chain, tmp_path_factory.mktemp("synth") / "art")
    invoke("synthesize", "train-vision", "--dataset", "demo", "--artifacts", art, *VISION, "--steps", 4,
           "--checkpoint-every", 2)
    return art


def test_train_vision_writes_a_run(synth):
    run = synth / "demo" / "synthesize" / "vision"
    assert {"vision.pt", "last.pt", "log.jsonl", "curves.png", "run.json"} <= {p.name for p in run.iterdir()}
    manifest = check_input(run / "vision.pt", "demo")
    assert manifest["options"]["model"]["prompt"] == "text+image" and manifest["options"]["train"]["steps"] == 4
    assert manifest["stage"] == "synthesize train-vision"
    assert manifest["command"].startswith("rrg-stage synthesize train-vision --dataset demo")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in log if r["event"] == "validation"] == [2, 4]
    model, info = load_vision(run / "vision.pt")
    assert model.config.resolution == 16 and info["view_names"] == ["frontal", "lateral"]
    bank = PromptBank(synth / "demo" / "dataset.h5", synth / "demo" / "labels.h5", synth / "demo" / "features.h5")
    try:  # the prompts are standardised by the training prompts' statistics, kept in the weights
        train_rows = bank.image_rows("train")
        assert torch.allclose(model.image_mean, torch.from_numpy(bank.image[train_rows].mean(0)), atol=1e-5)
        assert torch.allclose(model.text_std, torch.from_numpy(bank.text[np.unique(bank.image_study[train_rows])]
                                                                .std(0, ddof=1)), atol=1e-5)
    finally:
        bank.close()
    out = invoke("synthesize", "train-vision", "--dataset", "demo", "--artifacts", synth, *VISION, "--steps", 4,
                 "--checkpoint-every", 2)
    assert "up to date" in out


def test_balanced_training_draws_rare_findings_more_often(chain, tmp_path):
    bank = PromptBank(chain / "demo" / "dataset.h5", chain / "demo" / "labels.h5", chain / "demo" / "features.h5")
    try:
        model = VisionModel(VisionConfig(resolution=16, width=8, mults="1,2", attention="", heads=2))

        def drawn(balance: float) -> np.ndarray:
            trainer = VisionTrainer(model, bank, VisionOptions(batch_size=8, balance=balance), tmp_path, {})
            assert np.array_equal(trainer.indices(5), trainer.indices(5))  # a function of seed and step
            return np.concatenate([trainer.train_rows[trainer.indices(step)] for step in range(40)])

        labels = bank.labels[bank.image_study]
        counts = labels[bank.image_rows("train")].sum(0)
        rare = np.flatnonzero(labels[:, int(np.argmin(np.where(counts > 0, counts, np.inf)))])
        share = {b: np.isin(drawn(b), rare).mean() for b in (0.0, 1.0)}
        assert share[1.0] > 2 * share[0.0]
    finally:
        bank.close()


def test_finding_weights_follow_the_masks_share_of_each_pixel():
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, :4, :4] = True   # a quadrant: whole pixels at 4 px
    masks[1, 0, :2] = True    # half of one 4-px pixel (2 of its 4 source pixels)
    weights = finding_weights(masks, 4, 10.0)
    assert weights.shape == (2, 1, 4, 4)
    assert torch.equal(weights[0, 0, :2, :2], torch.full((2, 2), 11.0)) and float(weights[0, 0, 2:].max()) == 1.0
    assert float(weights[1, 0, 0, 0]) == 6.0 and float(weights[1].sum()) == 16 + 5.0


def test_weighted_loss_counts_each_pixel_by_its_weight():
    model = tiny_model(target="v").train()
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    prompts = Prompts(torch.randn(3, 6), torch.randn(3, 5), torch.tensor([0, 1, 0]))
    plain = model.loss(x0, prompts, torch.Generator().manual_seed(1))
    ones = model.loss(x0, prompts, torch.Generator().manual_seed(1), torch.ones(3, 1, 8, 8))
    assert torch.equal(plain, ones)
    inside = torch.zeros(3, 1, 8, 8)
    inside[:, :, :4] = 2.0  # the top half counted twice, the bottom half not at all
    top = model.loss(x0, prompts, torch.Generator().manual_seed(1), inside)
    bottom = model.loss(x0, prompts, torch.Generator().manual_seed(1), 2.0 - inside)
    assert torch.allclose(top + bottom, 2 * plain) and not torch.allclose(top, bottom)


def test_finding_weight_trains_on_the_adm_masks_and_records_them(synth, tmp_path):
    art = copy_chain(synth, tmp_path / "art")
    invoke("synthesize", "train-vision", "--dataset", "demo", "--artifacts", art, *VISION, "--steps", 2,
           "--checkpoint-every", 2, "--finding-weight", 5, "--name", "weighted")
    manifest = check_input(art / "demo" / "synthesize" / "weighted" / "vision.pt", "demo")
    assert manifest["options"]["train"]["finding_weight"] == 5.0 and "adm" in manifest["inputs"]
    bank = PromptBank(art / "demo" / "dataset.h5", art / "demo" / "labels.h5", art / "demo" / "features.h5")
    try:
        model = VisionModel(VisionConfig(resolution=16, width=8, mults="1,2", attention="", heads=2))
        with pytest.raises(ValueError, match="adm.h5"):
            VisionTrainer(model, bank, VisionOptions(finding_weight=5.0), tmp_path, {})
        masks = read_masks(art / "demo" / "adm.h5", bank.image_rows("train"))
        trainer = VisionTrainer(model, bank, VisionOptions(batch_size=4, finding_weight=5.0), tmp_path, {}, masks=masks)
        weights = trainer._batch(3)[3]  # each image's weights come with it
        assert torch.equal(weights, finding_weights(masks[trainer.indices(3)], 16, 5.0)) and float(weights.max()) > 1
    finally:
        bank.close()


@pytest.fixture(scope="module")
def extra(synth, tmp_path_factory) -> Path:
    """Another labelled dataset (7 training studies, a val and a test one) with features from the
    chain's encoders and finding masks from the chain's diagnosis classifier."""
    root = tmp_path_factory.mktemp("extra")
    raw = write_r2gen(root / "raw", splits=("train",) * 7 + ("val", "test"), prefix="EXT")
    annotation = json.loads((raw / "annotation.json").read_text())
    for entry in (e for split in annotation.values() for e in split):  # the demo's views, which the prompt names
        entry["views"] = ["frontal", "lateral"]
    (raw / "annotation.json").write_text(json.dumps(annotation))
    art = root / "art"
    invoke("preprocess", "--dataset", "demo", "--root", raw, "--artifacts", art, "--workers", 1, "--image-size", 64)
    invoke("label", "--dataset", "demo", "--artifacts", art)
    invoke("extract-features", "--dataset", "demo", "--artifacts", art, "--input-size", 64, "--batch-size", 32)
    invoke("adm-masks", "--dataset", "demo", "--artifacts", art, "--classifier", synth / "demo" / "diagnosis.pt",
           "--theta", 0.9)
    return art / "demo"


def _bank(folder: Path) -> PromptBank:
    return PromptBank(folder / "dataset.h5", folder / "labels.h5", folder / "features.h5")


def test_extra_training_studies_join_the_bank_after_its_own(synth, extra):
    bank, other = _bank(synth / "demo"), _bank(extra)
    try:
        own_images, own_train = len(bank.view), len(bank.image_rows("train"))
        assert bank.add_training(other) == 7
        rows = bank.image_rows("train")
        assert len(rows) == own_train + 14 and (rows[-14:] >= own_images).all()
        assert len(bank.image_rows("val")) == len(_bank(synth / "demo").image_rows("val"))  # validation stays own
        added = rows[-14:]
        assert (bank.image_file[added] == 1).all() and [bank.ids[s] for s in bank.image_study[added][::2]] == [
            f"EXT{i}_IM-{i:04d}" for i in range(7)]
        with DatasetFile(extra / "dataset.h5") as data:  # pixels, embeddings and labels come from the extra files
            assert np.array_equal(bank.pixels(added[[3, 0]]), data.pixels[:4][[3, 0]])
        with h5py.File(extra / "features.h5", "r") as h5:
            assert np.allclose(bank.image[added], h5["images/pooled"][:14])
        with h5py.File(extra / "labels.h5", "r") as h5:
            assert np.array_equal(bank.labels[bank.image_study[added]], h5["binary"][:7].repeat(2, axis=0))
        mixed = np.concatenate([rows[:3], added[:3]])
        assert [w for w, _, _ in bank.by_file(mixed)] == [0, 1]
        refs = bank.references(bank.labels[bank.image_study[mixed]], bank.view[mixed], bank.image_study[mixed],
                               np.random.default_rng(0))
        assert (bank.view[refs] == bank.view[mixed]).all() and (bank.splits[bank.image_study[refs]] == "train").all()
        bank.keep_references({f"EXT{i}_IM-{i:04d}" for i in range(7)})  # references from the extra studies only
        refs = bank.references(bank.labels[bank.image_study[mixed]], bank.view[mixed], bank.image_study[mixed],
                               np.random.default_rng(0))
        assert (bank.image_file[refs] == 1).all() and (bank.view[refs] == bank.view[mixed]).all()
        with pytest.raises(StageError, match="none of the given studies"):
            bank.keep_references({"no-such-study"})
    finally:
        bank.close()
    # a study that is a validation or test study here must not be trained on
    bank, again = _bank(synth / "demo"), _bank(synth / "demo")
    again.data.splits[:] = "train"
    with pytest.raises(StageError, match="validation or test studies of"):
        bank.add_training(again)
    bank.close()


def test_train_vision_with_extra_data_trains_on_its_images_and_masks(synth, extra, tmp_path):
    art = copy_chain(synth, tmp_path / "art")
    out = invoke("synthesize", "train-vision", "--dataset", "demo", "--artifacts", art, *VISION, "--steps", 2,
                 "--checkpoint-every", 2, "--finding-weight", 5, "--extra-data", extra, "--name", "pooled")
    assert f"(14 of them from the 7 training studies of {extra})" in out and f"reads {extra / 'adm.h5'}" in out
    run = art / "demo" / "synthesize" / "pooled"
    assert json.loads((run / "run.json").read_text())["extra_data"] == {"path": str(extra), "train_studies": 7}
    assert {"extra_dataset", "extra_labels", "extra_features", "extra_adm"} <= set(
        check_input(run / "vision.pt", "demo")["inputs"])
    # features from other encoder options make other prompts: refused, naming the option
    other = copy_chain(extra.parent, tmp_path / "other") / "demo"
    invoke("extract-features", "--dataset", "demo", "--artifacts", other.parent, "--input-size", 32, "--force")
    out = invoke("synthesize", "train-vision", "--dataset", "demo", "--artifacts", art, *VISION, "--steps", 2,
                 "--extra-data", other, "--name", "other", code=1)
    assert "extract the extra dataset's features with the same options" in out and "'input_size': 32" in out
    out = invoke("synthesize", "train-vision", "--dataset", "demo", "--artifacts", art, *VISION, "--steps", 2,
                 "--finding-weight", 5, "--extra-data", tmp_path, "--name", "other", code=1)
    assert "--extra-data" in out and "dataset.h5 is missing" in out


@pytest.mark.parametrize("keep", ["best", "last"])
def test_trainer_keeps_the_ema_of_the_lowest_validation_loss(chain, tmp_path, monkeypatch, keep):
    bank = PromptBank(chain / "demo" / "dataset.h5", chain / "demo" / "labels.h5", chain / "demo" / "features.h5")
    try:
        torch.manual_seed(0)
        model = VisionModel(VisionConfig(resolution=16, width=8, mults="1,2", attention="", heads=2))
        trainer = VisionTrainer(model, bank, VisionOptions(steps=4, batch_size=4, checkpoint_every=1, keep=keep),
                                tmp_path, {})
        losses, seen = iter([0.5, 0.2, 0.3, math.nan]), []

        def validation_loss(weights):
            seen.append({k: v.clone() for k, v in weights.items()})
            return next(losses)

        monkeypatch.setattr(trainer, "validation_loss", validation_loss)
        trainer.fit()
        weights, record = trainer.kept()
        expected, step = (seen[1], 2) if keep == "best" else (seen[3], 4)
        assert all(torch.equal(weights[k], expected[k]) for k in expected) and record["step"] == step
        assert not torch.equal(seen[1]["text_proj.0.weight"], seen[3]["text_proj.0.weight"])
        assert torch.load(tmp_path / "last.pt", weights_only=True)["state"]["best"]["step"] == 2
        resumed = VisionTrainer(model, bank, trainer.options, tmp_path, {})
        resumed.resume()  # last.pt carries the best EMA, so a resumed run keeps the same weights
        assert resumed.kept()[1]["step"] == step
        assert all(torch.equal(resumed.kept()[0][k], expected[k]) for k in expected)
    finally:
        bank.close()


def _kill_at_step(step: int, *args) -> subprocess.CompletedProcess:
    """`rrg-stage ARGS` in a subprocess that SIGKILLs itself when the vision trainer reaches `step`,
    on as many threads as this process (the uninterrupted run it is compared with ran here)."""
    script = ("import os, signal, sys\n"
              f"import torch; torch.set_num_threads({torch.get_num_threads()})\n"
              "from stages.synthesis.vision import VisionTrainer\n"
              "from stages.cli import main\n"
              "read = VisionTrainer._batch\n"
              "def batch(self, step):\n"
              f"    if step == {step}:\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return read(self, step)\n"
              "VisionTrainer._batch = batch\n"
              "main(sys.argv[1:])\n")
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True)


def test_train_vision_killed_mid_run_resumes_to_the_same_weights(synth, tmp_path):
    cut = copy_chain(synth, tmp_path / "cut")
    shutil.rmtree(cut / "demo" / "synthesize")
    args = ("synthesize", "train-vision", "--dataset", "demo", "--artifacts", cut, *VISION, "--steps", 4,
            "--checkpoint-every", 2)
    killed = _kill_at_step(3, *args)
    assert killed.returncode == -9, killed.stderr[-2000:]
    run = cut / "demo" / "synthesize" / "vision"
    assert (run / "last.pt").exists() and not (run / "vision.pt").exists()
    assert "resuming at step 2" in invoke(*args)
    resumed = torch.load(run / "vision.pt", weights_only=True)["model"]
    whole = torch.load(synth / "demo" / "synthesize" / "vision" / "vision.pt", weights_only=True)["model"]
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 2, 3, 4, 4]
    # other options for the finished run: trained again and replaced, not refused
    output = invoke(*args, "--lr", 0.01)
    assert "finished run with other options" in output and "resuming" not in output
    assert read_manifest(run / "vision.pt")["options"]["train"]["lr"] == 0.01


def test_train_vision_given_more_steps_continues_a_finished_run_to_the_longer_runs_weights(synth, tmp_path):
    short = copy_chain(synth, tmp_path / "short")
    shutil.rmtree(short / "demo" / "synthesize")
    args = ("synthesize", "train-vision", "--dataset", "demo", "--artifacts", short, *VISION, "--checkpoint-every", 2)
    invoke(*args, "--steps", 2)
    assert "training the 2-step run on from step 2 to 4" in invoke(*args, "--steps", 4)
    run = short / "demo" / "synthesize" / "vision"
    longer = torch.load(run / "vision.pt", weights_only=True)["model"]
    whole = torch.load(synth / "demo" / "synthesize" / "vision" / "vision.pt", weights_only=True)["model"]
    assert all(torch.equal(longer[k], whole[k]) for k in whole)
    assert read_manifest(run / "vision.pt")["options"]["train"]["steps"] == 4
    # fewer steps than the finished run: another job, trained afresh
    output = invoke(*args, "--steps", 3)
    assert "finished run with other options" in output and "run on from" not in output


def test_a_run_extends_another_only_by_a_larger_length():
    header = {"options": {"train": {"steps": 4, "lr": 0.1}}, "inputs": {"a": "x"}}
    longer = {"options": {"train": {"steps": 6, "lr": 0.1}}, "inputs": {"a": "x"}}
    assert extends(header, longer, ("train", "steps")) and not extends(longer, header, ("train", "steps"))
    assert not extends(header, longer, None) and not extends(header, header, ("train", "steps"))
    other = {"options": {"train": {"steps": 6, "lr": 0.2}}, "inputs": {"a": "x"}}
    assert not extends(header, other, ("train", "steps"))
    assert not extends(header, {**longer, "inputs": {"a": "y"}}, ("train", "steps"))


@pytest.fixture(scope="module")
def synthetic(synth) -> Path:
    """Three synthetic pairs (prompt reports) labelled and encoded as any dataset: synthetic/demo/."""
    invoke("synthesize", "generate", "--dataset", "demo", "--artifacts", synth, "--n", 3, "--reports", "prompt",
           *SAMPLING)
    root = synth / "synthetic"
    invoke("label", "--dataset", "demo", "--artifacts", root)
    invoke("extract-features", "--dataset", "demo", "--artifacts", root, "--input-size", 64, "--batch-size", 32)
    return root / "demo"


def test_generate_writes_a_dataset_that_passes_preprocessing_validation(synth, synthetic):
    records, cleaned = check_records(read_r2gen(synthetic / "raw"), "iu", strict=True)
    assert len(records) == 3 and all(r.split == "train" and len(r.images) == 2 for r in records)
    manifest = check_input(synthetic / "dataset.h5", "demo")
    assert manifest["synthetic"] is True and manifest["options"]["reports"] == "prompt"
    vocab = Vocabulary.load(synth / "demo" / "vocab.json")
    annotation = json.loads((synthetic / "raw" / "annotation.json").read_text())["train"]
    with DatasetFile(synthetic / "dataset.h5") as data, DatasetFile(synth / "demo" / "dataset.h5") as real:
        assert len(data) == 3 and data.image_size == real.image_size and data.pixels.shape[0] == 6
        assert (data.splits == "train").all()
        prompts = [real.ids.index(entry["prompt_study"]) for entry in annotation]
        assert data.reports == [real.reports[i] for i in prompts]  # the prompt reports, cleaned the same way
        assert data.token_ids.tolist() == vocab.encode_batch(data.reports, real.token_ids.shape[1])[0].tolist()
        assert data.pixels[:].std() > 0
    again = invoke("synthesize", "generate", "--dataset", "demo", "--artifacts", synth, "--n", 3, "--reports",
                   "prompt", *SAMPLING)
    assert "up to date" in again


def test_mixed_source_adds_only_the_extra_training_studies(synth, synthetic):
    real_dir = synth / "demo"
    with h5py.File(real_dir / "labels.h5", "r") as h5:
        labels = h5["binary"][:].astype(np.float32)
    with h5py.File(synthetic / "labels.h5", "r") as h5:
        extra_labels = h5["binary"][:].astype(np.float32)
    real = StudySource(real_dir / "dataset.h5", labels, features_h5=real_dir / "features.h5")
    extra = StudySource(synthetic / "dataset.h5", extra_labels, features_h5=synthetic / "features.h5")
    mixed = MixedSource(real, extra)
    try:
        offset = len(real.data)
        assert mixed.rows("train").tolist() == real.rows("train").tolist() + [offset, offset + 1, offset + 2]
        assert mixed.rows("val").tolist() == real.rows("val").tolist()
        rows = np.asarray([offset + 1, int(real.rows("train")[0]), offset])
        batch = mixed.batch(rows)
        assert torch.equal(batch.targets[0], torch.from_numpy(extra.data.token_ids[1].astype(np.int64)))
        assert torch.equal(batch.targets[1], torch.from_numpy(real.data.token_ids[rows[1]].astype(np.int64)))
        assert torch.equal(batch.views[2], extra.batch(np.asarray([0])).views[0])
        assert torch.equal(batch.labels[0], torch.from_numpy(extra_labels[1]))
    finally:
        mixed.close()


def test_train_with_extra_data_trains_on_the_synthetic_studies(synth, synthetic, monkeypatch):
    seen: list[int] = []
    read = MixedSource.batch

    def batch(self, rows, *, train=False, generator=None):
        if train:
            seen.extend(int(r) - self.offset for r in rows if r >= self.offset)
        return read(self, rows, train=train, generator=generator)

    monkeypatch.setattr(MixedSource, "batch", batch)
    train(synth, "--model", "base", "--name", "mixed", "--epochs", 1, "--extra-data", synthetic)
    assert sorted(seen) == [0, 1, 2]  # one epoch: each synthetic study once
    run = json.loads((synth / "demo" / "runs" / "mixed" / "run.json").read_text())
    assert run["extra_data"]["train_studies"] == 3 and run["extra_data"]["synthetic"] is True
    manifest = read_manifest(synth / "demo" / "runs" / "mixed" / "model.pt")
    assert {"extra_dataset", "extra_labels", "extra_features"} <= set(manifest["inputs"])
    # an extra dataset in another vocabulary is refused, naming the file
    own = synthetic / "vocab.json"
    own.write_text(json.dumps({"tokens": ["<unk>", "zzz"], "unk": "<unk>"}))
    try:
        out = train(synth, "--model", "base", "--name", "bad", "--epochs", 1, "--extra-data", synthetic, code=1)
    finally:
        own.unlink()
    assert "another vocabulary" in out and "dataset.h5" in out
    out = train(synth, "--model", "ekagen", "--name", "bad", "--epochs", 1, "--extra-data", synthetic, code=2)
    assert "--extra-data" in out


def test_evaluate_writes_the_measurements_and_a_grid(synth):
    invoke("synthesize", "evaluate", "--dataset", "demo", "--artifacts", synth, *SAMPLING, "--components", 3,
           "--grid-rows", 3)
    run = synth / "demo" / "synthesize" / "vision"
    results = json.loads((run / "evaluation_test.json").read_text())
    assert set(results["frechet"]) == {"real (floor)", "generated", "noise baseline", "mean-image baseline"}
    assert all(v["full"] >= 0 and v["pca3"] >= 0 for v in results["frechet"].values())
    assert results["frechet"]["noise baseline"]["full"] > results["frechet"]["real (floor)"]["full"]
    assert set(results["clinical_auroc"]) == {"generated", "real at 16 px", "real at 64 px"}
    trained = read_manifest(run / "vision.pt")["options"]["train"]  # the demo's finding weight
    assert (results["finding_weight"], results["vision_steps"], results["vision_kept_step"]) == (
        trained["finding_weight"], 4, 4) and trained["finding_weight"] > 0
    spans = results["clinical_auroc"]["generated"]["intervals"]
    assert set(spans) == {"Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Support Devices"}
    for name, bounds in spans.items():
        value = results["clinical_auroc"]["generated"]["per_class"][name]
        assert (bounds is None) if value is None else (bounds is None or bounds[0] <= bounds[1])
        few = results["positives"][name] < MIN_POSITIVES  # one or two positives: no interval, no target
        assert (bounds is None and results["targets"][f"auroc_{name}"] is None) if few else \
            results["targets"][f"auroc_{name}"] == value
    with np.load(run / "samples_test.npz") as samples:
        assert samples["images"].shape == (results["images"], 64, 64)
    assert (run / "grid_test.png").stat().st_size > 1000
    correlation = results["contrast_correlation"]
    assert set(correlation) <= {n for n in spans if results["positives"][n] >= MIN_POSITIVES}
    assert all(r is None or -1 <= r <= 1 for views in correlation.values() for r in views.values())
    assert (run / "contrasts_test.png").exists() == bool(correlation)


def test_synthesize_refuses_bad_input(synth, tmp_path):
    out = invoke("synthesize", "generate", "--dataset", "demo", "--artifacts", synth, "--run", "missing", "--n", 2,
                 *SAMPLING, code=1)
    assert "synthesize/missing/vision.pt is missing" in out and "synthesize train-vision" in out
    out = invoke("synthesize", "train-vision", "--dataset", "demo", "--artifacts", synth, *VISION, "--steps", 4,
                 "--resolution", 9, code=2)
    assert "divisible" in out
    run = synth / "demo" / "synthesize" / "vision"
    before = (run / "vision.pt").read_bytes()
    out = invoke("synthesize", "train-vision", "--dataset", "demo", "--artifacts", synth, *VISION, "--steps", 4,
                 "--checkpoint-every", 2, "--keep", "lowest", code=2)
    assert "--keep must be one of best, last" in out  # refused before the finished run is cleared
    assert (run / "vision.pt").read_bytes() == before and (run / "last.pt").exists()
    broken = copy_chain(synth, tmp_path / "broken")
    (broken / "demo" / "synthesize" / "vision" / "vision.pt").write_bytes(b"not a checkpoint")
    out = invoke("synthesize", "evaluate", "--dataset", "demo", "--artifacts", broken, *SAMPLING, code=1)
    assert "vision.pt" in out and ("changed after its manifest" in out or "not a vision module" in out)
