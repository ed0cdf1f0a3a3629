"""Shared fixtures: tiny datasets written on the fly, and the optional ../shared folder."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from stages.cli import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared() -> Path:
    """../shared beside the repository; tests that need it skip on a user's fresh clone."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present (only on the project's machines)")
    return SHARED


def radiograph(height: int = 48, width: int = 40, seed: int = 0) -> np.ndarray:
    """A small uint8 image with a left-to-right ramp (so resizing and orientation are checkable)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(20, 230, width)[None, :].repeat(height, axis=0)
    return np.clip(ramp + rng.normal(0, 5, (height, width)), 0, 255).astype(np.uint8)


REPORTS = [
    "The heart is normal in size. The lungs are clear.",
    "Mild cardiomegaly. No pleural effusion.",
    "Lungs are clear. No pneumothorax.",
    "There is a small right pleural effusion.",
    "The heart is normal. Stable nodule in the left upper lobe.",
    "No acute cardiopulmonary abnormality.",
    "Heart size normal. Lungs clear.",
    "Left lower lobe atelectasis.",
]


def write_r2gen(root: Path, splits: tuple[str, ...] = ("train",) * 5 + ("val", "test", "test"),
                reports: list[str] | None = None, prefix: str = "CXR") -> Path:
    """An R2Gen-layout folder: annotation.json and two PNG views per study (ids PREFIX<i>_IM-<i>)."""
    reports = reports or REPORTS
    annotation: dict[str, list] = {"train": [], "val": [], "test": []}
    for i, split in enumerate(splits):
        study = f"{prefix}{i}_IM-{i:04d}"
        (root / "images" / study).mkdir(parents=True, exist_ok=True)
        for view in range(2):
            Image.fromarray(radiograph(seed=2 * i + view)).save(root / "images" / study / f"{view}.png")
        annotation[split].append({"id": study, "report": reports[i % len(reports)],
                                  "image_path": [f"{study}/0.png", f"{study}/1.png"], "split": split})
    (root / "annotation.json").write_text(json.dumps(annotation))
    return root


@pytest.fixture
def r2gen_root(tmp_path: Path) -> Path:
    return write_r2gen(tmp_path / "raw")


# -- a tiny demo chain for the training, distillation and generation tests ----------------------
needs_demo = pytest.mark.skipif(importlib.util.find_spec("torchxrayvision") is None,
                                reason="the demo's report text ships in torchxrayvision's wheel (make setup installs it)")
# a generator small enough to train in seconds; every size option is a real CLI option
TINY = ("--d-model", 32, "--heads", 2, "--layers", 1, "--d-ff", 64, "--batch-size", 4, "--val-beam-size", 2,
        "--protos-per-class", 4, "--topk", 3)


def invoke(*args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


def train(art: Path, *extra, code=0) -> str:
    return invoke("train", "--dataset", "demo", "--artifacts", art, *TINY, *extra, code=code)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="session")
def chain(tmp_path_factory) -> Path:
    """36 demo studies at 64 px with every input a trainer reads: dataset, labels, features,
    prototypes (4 per group), a one-epoch diagnosis classifier with its masks (theta 0.9: the
    untrained classifier's masks cover 74-100% of a 64-px image, so some images are enhanced and some not), the knowledge base (3 reports per observation) and the features
    of the enhanced images. Tests train into runs/ under their own names, or into a copy."""
    if importlib.util.find_spec("torchxrayvision") is None:
        pytest.skip("the demo's report text ships in torchxrayvision's wheel")
    art = tmp_path_factory.mktemp("train") / "art"
    invoke("make-demo", "--out", art / "demo" / "raw", "--n-studies", 36, "--test-studies", -1, "--size", 64, "--workers", 1)
    invoke("preprocess", "--dataset", "demo", "--root", art / "demo" / "raw", "--artifacts", art, "--workers", 1,
           "--image-size", 64)
    invoke("label", "--dataset", "demo", "--artifacts", art)
    invoke("extract-features", "--dataset", "demo", "--artifacts", art, "--input-size", 64, "--batch-size", 32)
    invoke("kmeans-init", "--dataset", "demo", "--artifacts", art, "--per-group", 4)
    invoke("adm-masks", "--dataset", "demo", "--artifacts", art, "--epochs", 1, "--batch-size", 16, "--theta", 0.9)
    invoke("build-knowledge", "--dataset", "demo", "--artifacts", art, "--m", 3)
    invoke("extract-features", "--dataset", "demo", "--artifacts", art, "--input-size", 64, "--adm")
    return art


def copy_chain(chain: Path, dest: Path) -> Path:
    shutil.copytree(chain / "demo", dest / "demo", ignore=shutil.ignore_patterns("runs"))
    return dest


def run_killed(module: str, source: str, kill_at: int, *args) -> subprocess.CompletedProcess:
    """Run `rrg-stage ARGS` in a subprocess that SIGKILLs itself when `source` (a class in
    `module` with a `batch(rows, train, generator)` method) is asked for its kill_at-th training batch."""
    script = (
        "import os, signal, sys\n"
        f"from {module} import {source} as Source\n"
        "from stages.cli import main\n"
        "read, calls = Source.batch, []\n"
        "def batch(self, rows, train=False, generator=None):\n"
        "    if train:\n"
        "        calls.append(1)\n"
        f"        if len(calls) == {kill_at}:\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return read(self, rows, train=train, generator=generator)\n"
        "Source.batch = batch\n"
        "main(sys.argv[1:])\n")
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; on a busy machine extra intra-op threads only contend.
    A module that wants it says `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
