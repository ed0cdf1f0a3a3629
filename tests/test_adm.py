"""The diagnosis classifier, Grad-CAM, ADM masks, the enhancement rule and the adm-masks stage."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import stages.adm.classifier as classifier
from stages.adm.backbone import GRIDS, set_grid
from stages.adm.classifier import (Diagnosis, DiagnosisNet, f1_thresholds, load_diagnosis, pool_studies,
                                   predict_labels, save_diagnosis)
from stages.adm.enhance import enhance
from stages.adm.gradcam import aggregate_mask, grad_cam, peaks, scale_maps
from stages.adm.masks import adm_batch, read_masks
from stages.adm.metrics import mask_iou, pointing_hits, score_test
from stages import adm_masks
from stages.cli import main
from stages.core.config import dataset_config
from stages.labeling.observations import NO_FINDING, OBSERVATIONS
from stages.models.image_encoders import ImageEncoder, build_image_encoder


def invoke(*args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


# --- enhancement -------------------------------------------------------------------------------

def test_enhance_dims_outside_the_mask_only_when_it_covers_more_than_theta():
    image = np.full((4, 4), 100, dtype=np.uint8)
    big = np.zeros((4, 4), bool)
    big[:, :3] = True  # 75% of the image
    out = enhance(image, big, theta=0.4)
    assert out.dtype == np.uint8
    assert (out[:, :3] == 100).all() and (out[:, 3] == 40).all()
    small = np.zeros((4, 4), bool)
    small[0, 0] = True
    assert (enhance(image, small, theta=0.4) == image).all()
    assert (enhance(image, big, theta=0.8) == image).all()  # 0.75 is not above 0.8


def test_enhance_torch_batch_matches_numpy_and_keeps_dtype():
    rng = np.random.default_rng(0)
    images = rng.random((3, 2, 8, 8)).astype(np.float32)  # (B, C, H, W)
    masks = rng.random((3, 8, 8)) > 0.3
    masks[1] = False  # an empty mask leaves its image alone
    expected = enhance(images, masks, theta=0.4, background=0.25)
    got = enhance(torch.from_numpy(images), torch.from_numpy(masks), theta=0.4, background=0.25)
    assert got.dtype == torch.float32 and np.allclose(got.numpy(), expected)
    assert np.allclose(expected[1], images[1])
    manual = images[0] * np.where(masks[0], 1.0, 0.25)[None]
    assert np.allclose(expected[0], manual)


# --- Grad-CAM and the mask rule --------------------------------------------------------------------

class _Head(nn.Module):
    """A pooled linear head with a non-linearity, so that Grad-CAM weights differ per image."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 3)

    def forward(self, grid):
        pooled = grid.mean(dim=(-2, -1))
        return self.linear(pooled) * pooled.sum(dim=1, keepdim=True)


def test_batched_grad_cam_equals_one_backward_pass_per_image_and_class():
    torch.manual_seed(0)
    head, grid = _Head(), torch.randn(4, 5, 3, 3)
    cams = grad_cam(head, grid)
    assert cams.shape == (4, 3, 3, 3) and (cams < 0).any()  # signed: the ReLU belongs to the mask rule
    for b in range(4):
        for k in range(3):
            single = grid[b:b + 1].clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(head(single)[0, k], single)
            expected = (grad.mean(dim=(-2, -1))[0, :, None, None] * grid[b]).sum(0)
            assert torch.allclose(cams[b, k], expected, atol=1e-6)


def test_scale_peaks_and_aggregate_mask():
    cams = torch.zeros(1, 2, 4, 4)
    cams[0, 0, 1, 2] = 5.0  # class 0 peaks in grid cell (1, 2); class 1 is flat
    maps = scale_maps(cams, 16)
    assert maps.shape == (1, 2, 16, 16) and maps[0, 0].max() == 1 and (maps[0, 1] == 0).all()
    assert peaks(cams, 16)[0].tolist() == [[6, 10], [-1, -1]]  # cell centre (1.5*4, 2.5*4)
    negative = torch.full((1, 1, 4, 4), -3.0)
    negative[0, 0, 3, 0] = -1.0  # evidence negative everywhere: no Grad-CAM region, but a peak
    assert not scale_maps(negative, 16).any() and peaks(negative, 16)[0].tolist() == [[14, 2]]
    selected = torch.tensor([[True, True]])
    undilated = aggregate_mask(maps, selected, threshold=0.6, dilation=1)
    dilated = aggregate_mask(maps, selected, threshold=0.6, dilation=5)
    assert undilated.any() and (dilated >= undilated).all() and dilated.sum() > undilated.sum()
    assert not aggregate_mask(maps, torch.tensor([[False, True]]), 0.6, 5).any()  # only selected classes
    with pytest.raises(ValueError, match="odd"):
        aggregate_mask(maps, selected, dilation=4)


class _TopLeft(nn.Module):
    """Features of the top-left quadrant only: a network that cannot see the rest of the image."""

    def forward(self, x):
        keep = torch.zeros_like(x)
        keep[..., :x.shape[-2] // 2, :x.shape[-1] // 2] = 1
        return x * keep


def test_a_network_that_sees_one_quadrant_lights_that_quadrant_only():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4), _TopLeft())
    nn.init.constant_(body[0].weight, 0.1)
    nn.init.zeros_(body[0].bias)
    net = DiagnosisNet(ImageEncoder("efficientnet-lite0", body, 4), sharpness=5.0).eval()
    nn.init.constant_(net.head.weight, 1.0)  # every class: the brighter a cell, the higher its score
    diagnosis = Diagnosis(net, "efficientnet-lite0", 32, "truncated", np.zeros(14), np.zeros(14))
    images = np.full((3, 32, 32), 20, dtype=np.uint8)
    images[:, 24:30, 24:30] = 255  # a bright patch the network cannot see
    for i, (r, c) in enumerate([(2, 2), (8, 4), (4, 10)]):  # one it can, somewhere in its quadrant
        images[i, r:r + 4, c:c + 4] = 255
    batch = adm_batch(diagnosis, images, cam_threshold=0.6, dilation=1)
    rows, cols = batch.cam_max[..., 0], batch.cam_max[..., 1]
    assert (rows < 16).all() and (cols < 16).all()  # every class points into the seen quadrant
    assert batch.mask.any(axis=(1, 2)).all() and not batch.mask[:, 16:, :].any() and not batch.mask[:, :, 16:].any()
    for i, (r, c) in enumerate([(2, 2), (8, 4), (4, 10)]):  # and at the patch it saw
        assert (abs(rows[i] - (r + 2)) <= 4).all() and (abs(cols[i] - (c + 2)) <= 4).all()


@pytest.mark.parametrize("name", ["efficientnet-lite0", "resnet18", "densenet121"])
def test_every_grid_keeps_the_pretrained_weights_and_its_side(name):
    x = torch.randn(1, 3, 128, 128)
    full = build_image_encoder(name, "random").eval()  # batch-norm statistics fixed
    weights = {k: v.clone() for k, v in full.state_dict().items()}
    sides = {}
    for grid in GRIDS:
        encoder = build_image_encoder(name, "random")
        encoder.load_state_dict(weights)
        set_grid(encoder, grid).eval()
        with torch.no_grad():
            out = encoder(x)
        sides[grid] = out.shape[-2:]
        assert out.shape[1] == encoder.channels
        kept = encoder.state_dict()
        assert all(torch.equal(v, weights[k]) for k, v in kept.items() if k in weights)
        if grid in ("fine", "truncated"):  # fewer layers, each a pretrained one (possibly under a new name)
            assert len(kept) < len(weights)
            assert all(any(u.shape == v.shape and torch.equal(u, v) for u in weights.values()) for v in kept.values())
    assert sides == {"fine": (16, 16), "truncated": (8, 8), "dilated": (8, 8), "full": (4, 4)}
    with pytest.raises(ValueError, match="grid"):
        set_grid(build_image_encoder(name, "random"), "stride8")


# --- thresholds, pooling, test-time labels --------------------------------------------------------

def test_f1_thresholds_separate_a_separable_class_and_fall_back_without_positives():
    targets = np.array([[1, 0], [1, 0], [0, 0], [0, 0], [1, 0]])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.3], [0.1, 0.4], [0.7, 0.5]])
    thresholds = f1_thresholds(targets, probs, min_positives=1)
    assert 0.3 < thresholds[0] < 0.7 and thresholds[1] == 0.5
    assert f1_thresholds(targets, probs, min_positives=4)[0] == 0.5


def test_pool_studies_takes_the_maximum_over_views():
    probs = np.array([[0.1, 0.9], [0.6, 0.2], [0.3, 0.3]], dtype=np.float32)
    studies, pooled = pool_studies(probs, np.array([5, 5, 2]))
    assert studies.tolist() == [2, 5] and np.allclose(pooled, [[0.3, 0.3], [0.6, 0.9]])


@pytest.fixture(scope="module")
def tiny_diagnosis():
    torch.manual_seed(0)
    encoder = set_grid(build_image_encoder("efficientnet-lite0", "random"), "truncated")
    net = DiagnosisNet(encoder, sharpness=5.0).eval()
    return Diagnosis(net, "efficientnet-lite0", 64, "truncated", np.full(14, 0.5), np.full(14, 0.5))


def test_predict_labels_follow_thresholds_and_the_no_finding_rule(tiny_diagnosis):
    images = np.random.default_rng(0).integers(0, 255, (4, 64, 64), dtype=np.uint8)
    probs = tiny_diagnosis.probabilities(images)
    tiny_diagnosis.thresholds = np.where(np.arange(14) == 1, probs[:, 1].min() - 1e-3, 2.0)  # only Cardiomegaly
    labels, got = predict_labels(images, tiny_diagnosis)
    assert np.allclose(got, probs)
    assert labels[:, 1].all() and labels[:, NO_FINDING].sum() == 0 and labels.sum() == 4
    tiny_diagnosis.study_thresholds = np.full(14, 2.0)
    by_study, pooled = predict_labels(images, tiny_diagnosis, study=np.array([0, 0, 1, 1]))
    assert by_study.shape == (2, 14) and (by_study[:, NO_FINDING] == 1).all() and by_study.sum() == 2
    assert np.allclose(pooled[0], probs[:2].max(axis=0))


def test_diagnosis_checkpoint_round_trip_and_refusals(tiny_diagnosis, tmp_path):
    path = tmp_path / "diagnosis.pt"
    save_diagnosis(tiny_diagnosis, path)
    loaded = load_diagnosis(path, expected_image_size=64)
    images = np.random.default_rng(1).integers(0, 255, (2, 64, 64), dtype=np.uint8)
    assert np.allclose(loaded.probabilities(images), tiny_diagnosis.probabilities(images), atol=1e-6)
    assert np.allclose(loaded.thresholds, tiny_diagnosis.thresholds)
    with pytest.raises(ValueError, match="64-px images, but these images are 128 px"):
        load_diagnosis(path, expected_image_size=128)
    with pytest.raises(ValueError, match="another order"):
        load_diagnosis(path, observations=tuple(reversed(OBSERVATIONS)))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a diagnosis checkpoint"):
        load_diagnosis(tmp_path / "junk.pt")


# --- localisation metrics ------------------------------------------------------------------------------

def test_pointing_game_and_iou_against_known_regions():
    regions = np.zeros((2, 14, 10, 10), bool)
    regions[0, 1, 2:5, 2:5] = True  # image 0: Cardiomegaly region
    regions[1, 9, 6:9, 6:9] = True  # image 1: Effusion region
    targets = np.zeros((2, 14), np.uint8)
    targets[0, 1] = targets[1, 9] = 1
    targets[1, 2] = 1  # positive but without a region: not scored
    cam_max = np.full((2, 14, 2), -1)
    cam_max[0, 1] = (3, 3)  # inside
    cam_max[1, 9] = (1, 1)  # far outside
    scored, hit = pointing_hits(cam_max, targets, regions, tolerance=0)
    assert scored.sum() == 2 and hit[0, 1] and not hit[1, 9]
    cam_max[1, 9] = (5, 5)  # one pixel from the region: a hit only with tolerance
    assert not pointing_hits(cam_max, targets, regions, 0)[1][1, 9]
    assert pointing_hits(cam_max, targets, regions, 1)[1][1, 9]
    masks = regions.any(axis=1).copy()
    masks[1] = False
    iou = mask_iou(masks, regions.any(axis=1))
    assert iou[0] == 1.0 and iou[1] == 0.0


def test_score_test_reports_auroc_pointing_and_iou():
    rng = np.random.default_rng(0)
    study_targets = np.zeros((4, 14), np.uint8)
    study_targets[[0, 1], 1] = 1
    study_targets[[2, 3], NO_FINDING] = 1
    image_study = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    probs = rng.random((8, 14)).astype(np.float32) * 0.1
    probs[:4, 1] = 0.9  # Cardiomegaly perfectly ranked
    regions = np.zeros((8, 14, 8, 8), bool)
    regions[:4, 1, :4, :4] = True
    cam_max = np.full((8, 14, 2), 1)
    masks = regions.any(axis=1)
    metrics = score_test(probs=probs, cam_max=cam_max, masks=masks, image_study=image_study,
                         views=np.array(["frontal", "lateral"] * 4), study_targets=study_targets, regions=regions,
                         found=np.ones(8, bool), min_positives=2)
    assert metrics["classifier"]["per_class"]["Cardiomegaly"]["auroc_study"] == 1.0
    assert metrics["classifier"]["macro_over"] == ["Cardiomegaly", "No Finding"]
    assert metrics["pointing_game"]["all"]["hit_rate"] == 1.0 and metrics["pointing_game"]["all"]["total"] == 4
    assert metrics["pointing_game"]["frontal"]["total"] == 2
    assert metrics["pointing_game"]["all"]["centre_baseline"] == 1.0  # (4, 4) is within 2 px of the region
    assert metrics["pointing_game"]["all"]["hit_rate_inside"] == 1.0  # (1, 1) lies in it
    cam_max[:4, 1] = (5, 5)  # one pixel off: a hit within the tolerance only
    pointing = score_test(probs=probs, cam_max=cam_max, masks=masks, image_study=image_study,
                          views=np.array(["frontal", "lateral"] * 4), study_targets=study_targets, regions=regions,
                          found=np.ones(8, bool), min_positives=2)["pointing_game"]["all"]
    assert pointing["hit_rate"] == 1.0 and pointing["hit_rate_inside"] == 0.0
    assert metrics["mask_iou"]["all"]["mean_iou"] == 1.0 and metrics["mask_iou"]["all"]["images_with_regions"] == 4


# --- the stage on a tiny phantom demo ----------------------------------------------------------------

needs_demo = pytest.mark.skipif(importlib.util.find_spec("torchxrayvision") is None,
                                reason="the demo's report text ships in torchxrayvision's wheel (make setup installs it)")


@pytest.fixture(scope="module")
def adm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("adm")
    art = root / "art"
    invoke("make-demo", "--out", art / "demo" / "raw", "--n-studies", 40, "--test-studies", -1, "--size", 64, "--workers", 1)
    invoke("preprocess", "--dataset", "demo", "--root", art / "demo" / "raw", "--artifacts", art, "--workers", 1,
           "--image-size", 64)
    invoke("label", "--dataset", "demo", "--artifacts", art)
    output = invoke("adm-masks", "--dataset", "demo", "--artifacts", art, "--epochs", 2, "--batch-size", 16)
    return art / "demo", output


def copy_inputs(demo: Path, art: Path) -> Path:
    """A second artifact root holding the demo's inputs of adm-masks but none of its outputs."""
    shutil.copytree(demo, art / "demo", ignore=shutil.ignore_patterns("adm*", "diagnosis*"))
    return art


@needs_demo
def test_adm_stage_writes_classifier_masks_metrics_and_overlays(adm_run):
    out, output = adm_run
    assert "pointing game" in output and "mask IoU" in output
    with h5py.File(out / "adm.h5") as h5, h5py.File(out / "dataset.h5") as data:
        n = data["images/path"].shape[0]
        assert h5["mask"].shape == (n, 64, 64) and h5["probs"].shape == (n, 14) and h5["cam_max"].shape == (n, 14, 2)
        area = h5["area"][:]
        assert np.allclose(area, h5["mask"][:].reshape(n, -1).mean(axis=1), atol=1e-6)
        assert ((h5["probs"][:] >= 0) & (h5["probs"][:] <= 1)).all()
        options = {**adm_masks.DEFAULTS, **dataset_config("demo")["adm-masks"]}
        assert all(h5.attrs[key] == options[key] for key in ("cam_threshold", "dilation", "theta"))
        assert not h5["predicted"][:, NO_FINDING].any()
    assert read_masks(out / "adm.h5", np.array([3, 0, 3])).shape == (3, 64, 64)
    metrics = json.loads((out / "adm_metrics.json").read_text())
    assert metrics["test_images"] == 2 * metrics["test_studies"] > 0
    assert set(metrics["pointing_game"]) >= {"all", "frontal", "lateral", "tolerance_px"}
    assert (out / "adm_overlays.png").stat().st_size > 10_000
    manifest = json.loads((out / "diagnosis.pt.meta.json").read_text())
    assert manifest["options"]["epochs"] == 2 and "val_macro_auroc" in manifest["counts"]
    assert set(json.loads((out / "adm.h5.meta.json").read_text())["metrics"]) == {"test_macro_auroc", "pointing_game",
                                                                                  "mask_iou"}
    diagnosis = load_diagnosis(out / "diagnosis.pt", expected_image_size=64)
    assert diagnosis.info["best_epoch"] in (1, 2) and len(diagnosis.info["history"]) == 2


@needs_demo
def test_adm_stage_is_up_to_date_and_reuses_a_given_classifier(adm_run, tmp_path):
    out, _ = adm_run
    art = out.parent
    assert "up to date" in invoke("adm-masks", "--dataset", "demo", "--artifacts", art, "--epochs", 2,
                                  "--batch-size", 16)
    before = read_masks(out / "adm.h5", slice(None))
    # a looser CAM threshold only remakes the masks, with the same classifier
    output = invoke("adm-masks", "--dataset", "demo", "--artifacts", art, "--epochs", 2, "--batch-size", 16,
                    "--cam-threshold", 0.3)
    assert "training" not in output and "diagnosis.pt up to date" in output
    looser = read_masks(out / "adm.h5", slice(None))
    assert (looser >= before).all()
    # another artifact folder with a copied classifier: no training
    other = copy_inputs(out, tmp_path / "art")
    output = invoke("adm-masks", "--dataset", "demo", "--artifacts", other, "--classifier", out / "diagnosis.pt")
    assert "training" not in output
    with h5py.File(out / "adm.h5") as a, h5py.File(other / "demo" / "adm.h5") as b:
        assert np.allclose(a["probs"][:], b["probs"][:], atol=1e-5)
    invoke("adm-masks", "--dataset", "demo", "--artifacts", other, "--dilation", 4, code=2)


@needs_demo
def test_diagnosis_training_resumes_after_an_interruption(adm_run, tmp_path, monkeypatch):
    out, _ = adm_run
    art = copy_inputs(out, tmp_path / "art")
    evaluate, calls = classifier.evaluate, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # validation of the second epoch
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(classifier, "evaluate", interrupted)
    args = ("adm-masks", "--dataset", "demo", "--artifacts", art, "--epochs", 2, "--batch-size", 16)
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code != 0 and not (art / "demo" / "diagnosis.pt").exists()
    assert (art / "demo" / "diagnosis.pt.partial").exists()
    monkeypatch.setattr(classifier, "evaluate", evaluate)
    output = invoke(*args)
    assert "resuming diagnosis training after epoch 1 of 2" in output
    resumed = load_diagnosis(art / "demo" / "diagnosis.pt")
    straight = load_diagnosis(out / "diagnosis.pt")
    assert resumed.info["history"] == straight.info["history"]
    assert not (art / "demo" / "diagnosis.pt.partial").exists()
