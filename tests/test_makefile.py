"""`make demo` as a dry run: which stages it chains, and in which order (nothing is executed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def dry_run(target: str, tmp_path: Path) -> str:
    """What `make -n target` would run, with artifacts and the venv under tmp_path."""
    return subprocess.run(["make", "-n", target, f"ART={tmp_path / 'art'}", f"VENV={tmp_path / 'venv'}"],
                          cwd=REPO, capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_demo_chains_every_stage_in_order(tmp_path):
    out = dry_run("demo", tmp_path)
    stages = [line.split("rrg-stage", 1)[1].split()[0] for line in out.splitlines() if "rrg-stage " in line]
    expected = ["make-demo", "preprocess", "extract-features", "label", "kmeans-init", "build-knowledge",
                "adm-masks", "baselines", "train", "evaluate", "train", "evaluate", "compare", "pretrain",
                "probe", "status"]
    assert stages == expected
    assert "--model xpronet" in out and "probe --run" in out


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_demo_prior_pretrains_on_the_training_pool_too(tmp_path):
    out = dry_run("demo-prior", tmp_path)
    pool = tmp_path / "art" / "pretrain-pool" / "demo"
    assert f"make-demo --out {pool}/raw" in out
    assert f"--root {pool}/raw --artifacts {tmp_path / 'art' / 'pretrain-pool'}" in out
    pretrained = [line for line in out.splitlines() if "rrg-stage pretrain" in line]
    assert sum(f"--extra-data {pool} " in line for line in pretrained) == 4 and len(pretrained) == 7
    assert sum("--no-spb" in line for line in pretrained) == 2
    assert "--baselines imagenet imagenet-pool imagenet-pool-nobank" in out


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_demo_synth_trains_the_vision_module_on_the_training_pool_too(tmp_path):
    art = tmp_path / "art"
    out = dry_run("demo-synth", tmp_path)
    pool = art / "pretrain-pool"
    for stage in ("label", "extract-features"):
        assert f"rrg-stage {stage} --dataset demo --artifacts {pool}\n" in out
    # the pool's finding masks come from the demo's own classifier, which scores the generated images
    assert f"adm-masks --dataset demo --artifacts {pool} --classifier {art}/demo/diagnosis.pt" in out
    vision = [line for line in out.splitlines() if "train-vision" in line]
    assert len(vision) == 1 and vision[0].endswith(f"--extra-data {pool}/demo")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_demo_iu_scale_runs_the_demo_chain_on_a_larger_draw_in_its_own_root(tmp_path):
    art = tmp_path / "art"
    out = dry_run("demo-iu-scale", tmp_path)
    root = art / "iu-scale"
    lines = [line for line in out.splitlines() if "rrg-stage " in line]
    assert all(f"{root}" in line for line in lines)
    assert any(line.endswith("--n-studies 4000") and "make-demo" in line for line in lines)
    assert any(line.endswith("--epochs 4") and "adm-masks" in line for line in lines)
    trained = [line.split("--model ")[1] for line in lines if "rrg-stage train" in line]
    assert sorted(trained) == ["base", "xpronet"]
    assert lines[-1].split("rrg-stage")[1].split()[0] == "compare"
