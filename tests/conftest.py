"""Shared fixtures: tiny datasets written on the fly, and the optional ../shared folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
                reports: list[str] | None = None) -> Path:
    """An R2Gen-layout folder: annotation.json and two PNG views per study."""
    reports = reports or REPORTS
    annotation: dict[str, list] = {"train": [], "val": [], "test": []}
    for i, split in enumerate(splits):
        study = f"CXR{i}_IM-{i:04d}"
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
