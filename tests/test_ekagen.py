"""EKAGen: the knowledge-augmented decoder, ADM-enhanced inputs and global information self-distillation."""

from __future__ import annotations

import json
from dataclasses import replace

import h5py
import numpy as np
import torch

from conftest import copy_chain, invoke, needs_demo, run_killed, same_weights, train  # tests/ is on sys.path under pytest
from stages.evaluation.nlg import NlgScorer
from stages.generation.config import GeneratorConfig
from stages.generation.models import build_generator
from stages.knowledge.base import knowledge_slots
from stages.training.data import AdmEnhancement, Batch, StudySource
from stages.training.distill import Teacher, distillation_loss
from stages.training.model import VisualSpec, build_model, load_model

SMALL = GeneratorConfig(vocab_size=20, model="ekagen", d_model=16, heads=2, layers=2, d_ff=32, visual_dim=8,
                        knowledge_per_class=2, knowledge_dim=6)


def _batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views = torch.randn(3, 2, 4, 8, generator=g)
    targets = torch.randint(1, 20, (3, 7), generator=g)
    targets[:, 0] = 0
    labels = torch.zeros(3, 14)
    labels[0, 1] = labels[1, 9] = 1
    return Batch(np.arange(3), views, torch.ones(3, 2, dtype=torch.bool), targets, torch.ones(3, 7, dtype=torch.bool),
                 labels)


def test_distillation_term_is_zero_for_the_same_model_on_the_same_input():
    torch.manual_seed(0)
    model = build_model(SMALL, VisualSpec("cached", "efficientnet-lite0", None, 64, 64),
                        knowledge=np.random.default_rng(0).normal(size=(14, 2, 6)).astype(np.float32)).eval()
    batch = _batch()
    same = Teacher(model, temperature=4.0, weight=0.01).distil(model(batch), replace(batch, teacher_views=batch.views))
    assert same.terms["kd"].abs().item() < 1e-6
    assert torch.allclose(same.loss, same.terms["ce"])
    other = Teacher(model).distil(model(batch), replace(batch, teacher_views=batch.views + 1.0))
    assert other.terms["kd"].item() > 1e-6
    assert torch.isclose(other.loss, other.terms["ce"] + 0.01 * 16 * other.terms["kd"])
    # KL(p || q) by hand for one position
    s, t = torch.randn(1, 1, 5), torch.randn(1, 1, 5)
    p, q = torch.softmax(t / 2, -1), torch.softmax(s / 2, -1)
    expected = (p * (p.log() - q.log())).sum()
    assert torch.isclose(distillation_loss(s, t, torch.ones(1, 1, dtype=torch.bool), 2.0), expected)


def test_each_study_attends_to_the_knowledge_of_exactly_its_labels():
    labels = torch.zeros(2, 14)
    labels[0, [1, 9]] = 1
    slots = knowledge_slots(labels, 2)
    assert slots[0].nonzero().flatten().tolist() == [2, 3, 18, 19]
    assert slots[1].nonzero().flatten().tolist() == [26, 27]  # nothing positive: No Finding's entries
    torch.manual_seed(0)
    rks = np.random.default_rng(1).normal(size=(14, 2, 6)).astype(np.float32)
    generator = build_generator(SMALL, knowledge=rks).eval()
    batch = _batch()

    def logits(table: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            generator.knowledge.rks.copy_(torch.from_numpy(table).flatten(0, 1))
            flat = batch.views.flatten(1, 2)
            return generator(flat, torch.ones(flat.shape[:2], dtype=torch.bool), batch.targets, batch.target_mask,
                             batch.labels).logits

    base = logits(rks)
    unselected = rks.copy()
    unselected[4] += 5.0  # Lung Opacity: no study of the batch has it
    assert torch.allclose(base, logits(unselected), atol=1e-6)
    selected = rks.copy()
    selected[9] += 5.0  # Pleural Effusion: study 1 has it, studies 0 and 2 do not
    changed = (base - logits(selected)).abs().amax(dim=(1, 2))
    assert changed[1] > 1e-3 and changed[0] < 1e-6 and changed[2] < 1e-6


@needs_demo
def test_enhanced_inputs_dim_what_the_mask_leaves_out(chain):
    base = chain / "demo"
    with h5py.File(base / "adm.h5", "r") as h5:
        area, theta = h5["area"][:], float(h5.attrs["theta"])
    with h5py.File(base / "dataset.h5", "r") as h5:
        image_study = h5["images/study"][:]
    image = int(np.argmax(area))
    assert area[image] > theta
    labels = np.zeros((int(image_study.max()) + 1, 14), np.float32)
    plain = StudySource(base / "dataset.h5", labels)
    rich = StudySource(base / "dataset.h5", labels, adm=AdmEnhancement(base / "adm.h5", theta, 0.4))
    try:
        study = int(image_study[image])
        view = int(np.flatnonzero(plain.view_rows[study] == image)[0])
        a, b = plain.batch(np.array([study])).views[0, view], rich.batch(np.array([study])).views[0, view]
    finally:
        plain.close()
        rich.close()
    with h5py.File(base / "adm.h5", "r") as h5:
        mask = torch.from_numpy(h5["mask"][image].astype(bool))
    assert torch.equal(a[mask], b[mask])
    outside = a[~mask] > 0.1
    assert torch.allclose(b[~mask][outside], a[~mask][outside] * 0.4, atol=1 / 255)
    with h5py.File(base / "features.h5", "r") as h5, h5py.File(base / "features_adm.h5", "r") as h5a:
        assert not np.array_equal(h5["images/patches"][image], h5a["images/patches"][image])
        plain_image = int(np.flatnonzero(area <= theta)[0])
        assert np.array_equal(h5["images/patches"][plain_image], h5a["images/patches"][plain_image])
        assert "text" not in h5a["studies"]


@needs_demo
def test_ekagen_trains_on_knowledge_and_enhanced_tokens_and_generates(chain, monkeypatch):
    monkeypatch.setattr(NlgScorer, "meteor", lambda self, gts, res: 0.5)  # no Java needed here
    output = train(chain, "--model", "ekagen", "--name", "ekagen", "--epochs", 1)
    assert "ADM-enhanced" in output
    run = chain / "demo" / "runs" / "ekagen"
    info = json.loads((run / "run.json").read_text())
    assert info["model"] == "ekagen" and info["adm_enhanced_input"] is True and "diagnosis.pt" in info["labels"]
    manifest = json.loads((run / "model.pt.meta.json").read_text())
    assert {"knowledge", "features_adm", "adm", "diagnosis"} <= set(manifest["inputs"])
    assert manifest["options"]["train"]["optimizer"] == "adamw" and manifest["options"]["train"]["clip"] == "norm"
    saved = load_model(run / "model.pt")
    assert saved.config.knowledge_per_class == 3 and saved.model.visual.adm["background"] == 0.4
    images = sorted((chain / "demo" / "raw" / "images").glob("*/*.png"))[:2]
    printed = invoke("generate", "--run", run, *images)
    assert all(path.stem in printed for path in images)
    invoke("evaluate", "--run", run)
    assert json.loads((run / "metrics_test.json").read_text())["adm_enhanced_input"] is True
    # the ablation without ADM: plain cached tokens
    train(chain, "--model", "ekagen", "--name", "knowledge-only", "--epochs", 1, "--no-adm")
    plain = json.loads((chain / "demo/runs/knowledge-only/model.pt.meta.json").read_text())
    assert "features_adm" not in plain["inputs"] and load_model(chain / "demo/runs/knowledge-only/model.pt").model.visual.adm is None


def distill(art, *extra, code=0) -> str:
    return invoke("distill", "--dataset", "demo", "--artifacts", art, "--teacher", "ekagen", "--epochs", 2,
                  "--checkpoint-every", 2, *extra, code=code)


@needs_demo
def test_distillation_rounds_resume_and_refuse_unfit_teachers(chain, tmp_path):
    whole = copy_chain(chain, tmp_path / "whole")
    train(whole, "--model", "ekagen", "--epochs", 1)
    output = distill(whole, "--rounds", 2)
    assert "round 1" in output and "ekagen-gid2" in output
    runs = whole / "demo" / "runs"
    for round_ in (1, 2):
        run = json.loads((runs / f"ekagen-gid{round_}" / "run.json").read_text())
        assert run["distilled"]["round"] == round_ and run["adm_enhanced_input"] is True
        records = [json.loads(line) for line in (runs / f"ekagen-gid{round_}" / "log.jsonl").read_text().splitlines()]
        assert any(r.get("kd", 0) > 0 for r in records if r["event"] == "train")
    assert json.loads((runs / "ekagen-gid2/run.json").read_text())["distilled"]["teacher"] == "ekagen-gid1"
    assert distill(whole, "--rounds", 2).count("up to date") == 2

    # killed inside round 2: round 1 is kept, round 2 resumes to the uninterrupted weights
    cut = copy_chain(chain, tmp_path / "cut")
    train(cut, "--model", "ekagen", "--epochs", 1)
    distill(cut, "--rounds", 1)
    killed = run_killed("stages.training.distill", "DistillationSource", 11, "distill", "--dataset", "demo",
                        "--artifacts", cut, "--teacher", "ekagen", "--epochs", 2, "--checkpoint-every", 2, "--rounds", 2)
    assert killed.returncode == -9, killed.stderr
    assert not (cut / "demo/runs/ekagen-gid2/model.pt").exists() and (cut / "demo/runs/ekagen-gid2/last.pt").exists()
    resumed = distill(cut, "--rounds", 2)
    assert "resuming after epoch 1, step" in resumed
    assert same_weights(runs / "ekagen-gid2/model.pt", cut / "demo/runs/ekagen-gid2/model.pt")

    # a teacher without ADM input, and one trained on another vocabulary, are refused by name
    train(whole, "--model", "base", "--epochs", 1)
    assert "trained on plain images" in invoke("distill", "--dataset", "demo", "--artifacts", whole, "--teacher", "base",
                                               code=1)
    saved = torch.load(runs / "ekagen" / "model.pt", map_location="cpu", weights_only=True)
    saved["vocab"] = saved["vocab"] + ["zzz"]
    torch.save(saved, runs / "ekagen" / "model.pt")
    assert "another vocabulary" in distill(whole, code=1)
    assert "no trained run" in invoke("distill", "--dataset", "demo", "--artifacts", whole, "--teacher", "nope", code=1)


@needs_demo
def test_end_to_end_ekagen_enhances_pixels_and_distils(chain, tmp_path):
    art = copy_chain(chain, tmp_path)
    train(art, "--model", "ekagen", "--epochs", 1, "--visual", "end-to-end", "--weights", "random")
    saved = load_model(art / "demo/runs/ekagen/model.pt")
    assert saved.model.visual.mode == "end-to-end" and saved.model.visual.adm["theta"] == 0.9
    assert "features_adm" not in json.loads((art / "demo/runs/ekagen/model.pt.meta.json").read_text())["inputs"]
    invoke("distill", "--dataset", "demo", "--artifacts", art, "--teacher", "ekagen", "--epochs", 1,
           "--test-input", "plain")
    student = load_model(art / "demo/runs/ekagen-gid1/model.pt")
    assert student.model.visual.mode == "end-to-end" and student.model.visual.adm is None
