"""torchvision and transformers import on a CPU torch build once stages.compat is imported."""

from __future__ import annotations

import subprocess
import sys

import torch

import stages.compat
import torchvision  # noqa: E402  (must come after stages.compat)


def test_torchvision_and_transformers_import_in_a_fresh_process():
    code = ("import stages.compat, torchvision, torch; from transformers import BertModel; "
            "m = torchvision.models.resnet18().eval(); print(tuple(m(torch.zeros(1, 3, 64, 64)).shape))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "(1, 1000)"


def test_nms_matches_a_brute_force_reference():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(60, 2, generator=generator) * 50
    boxes = torch.cat([corners, corners + 5 + torch.rand(60, 2, generator=generator) * 20], dim=1)
    scores = torch.rand(60, generator=generator)
    kept = torch.ops.torchvision.nms(boxes, scores, 0.3).tolist()
    expected = []
    for i in scores.argsort(descending=True).tolist():
        if all(stages.compat.nms(boxes[[i, j]], torch.tensor([1.0, 0.5]), 0.3).numel() == 2 for j in expected):
            expected.append(i)
    assert kept == expected
    assert torchvision.ops.roi_align(torch.rand(1, 2, 8, 8), [torch.tensor([[0, 0, 4, 4.0]])], 2).shape == (1, 2, 2, 2)
