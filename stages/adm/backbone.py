"""The feature grid Grad-CAM reads: where the diagnosis classifier's encoder ends.

Grad-CAM can only point as finely as the grid it is computed on, and only as truly as the
grid's cells are local. At the demo's 128 px an encoder as built ends on a 4x4 grid (stride 32),
whose cell centres miss most of the small true finding regions even for a perfect map. Four
grids, all from the same pretrained weights:
- "fine" (default): "truncated" with its last stage made stride 8 by dilation (16x16 at 128 px).
  Measured on the demo test split: pointing game 0.73 against 0.66 for "truncated", 0.13 for
  "dilated" and 0.08 before that, at 3.3x the training step time of "truncated" (bench/adm.py).
- "truncated": the encoder stops after its last stride-16 stage (EfficientNet-Lite0's
  112-channel stage, ResNet's layer3, DenseNet's denseblock3 with its transition's norm and ReLU)
  and the class scores are read there. The stride-32 stages see the whole 128-px image and are
  free to move a finding's evidence away from it; a shallower encoder cannot.
- "dilated": the full encoder at output stride 16, as in DeepLab: the last stride-2 convolution
  becomes stride 1 and the convolutions after it are dilated by 2, so every filter keeps its
  receptive field.
- "full": the encoder as built (stride 32).
"""

from __future__ import annotations

import stages.compat  # noqa: F401  (before torchvision)
from torch import nn
from torchvision.models.densenet import _DenseBlock, _Transition

from stages.models.image_encoders import ImageEncoder

GRIDS = ("fine", "truncated", "dilated", "full")


def _dilate(conv: nn.Conv2d) -> None:
    conv.dilation = (2, 2)
    conv.padding = (conv.kernel_size[0] - 1, conv.kernel_size[1] - 1)


def _last_strided_block(blocks: list[nn.Module]) -> int:
    return max(i for i, block in enumerate(blocks) if max(block._depthwise_conv.stride) == 2)


class _EfficientNetStride16(nn.Module):
    """EfficientNet's stem and blocks up to its last stride-16 one (the head is dropped)."""

    def __init__(self, net: nn.Module, blocks: int):
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[:blocks])
        self.total_blocks = len(net._blocks)
        self.drop_connect_rate = float(net._global_params.drop_connect_rate or 0.0)

    def forward(self, x):
        x = self.stem(x)
        for idx, block in enumerate(self.blocks):  # drop-connect scaled by depth, as the full network does
            x = block(x, drop_connect_rate=self.drop_connect_rate * idx / self.total_blocks)
        return x


def _truncate(encoder: ImageEncoder) -> None:
    if encoder.name == "efficientnet-lite0":
        net = encoder.body.net
        keep = _last_strided_block(list(net._blocks))
        encoder.body = _EfficientNetStride16(net, keep)
        encoder.channels = net._blocks[keep - 1]._project_conv.out_channels
    elif encoder.name.startswith("resnet"):
        layer3 = encoder.body[-2]
        encoder.body = encoder.body[:-1]
        encoder.channels = [m for m in layer3.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features
    elif encoder.name == "densenet121":
        children = dict(encoder.body[0].named_children())
        names = list(children)
        norm = children["transition3"].norm
        kept = [children[name] for name in names[:names.index("denseblock3") + 1]]
        encoder.body = nn.Sequential(*kept, norm, nn.ReLU(inplace=False))
        encoder.channels = norm.num_features
    else:
        raise ValueError(f"no truncation rule for encoder {encoder.name!r}")


def _dilate_last_stage(encoder: ImageEncoder) -> None:
    """Halve the encoder's output stride: its last stride-2 step becomes stride 1 and the 3x3 (or
    larger) convolutions after it are dilated by 2, so every filter keeps its receptive field."""
    if encoder.name == "efficientnet-lite0":
        body = encoder.body
        blocks = list(body.blocks if isinstance(body, _EfficientNetStride16) else body.net._blocks)
        last = _last_strided_block(blocks)
        strided = blocks[last]._depthwise_conv
        strided.stride = (1, 1)
        strided.static_padding = nn.ZeroPad2d(strided.kernel_size[0] // 2)
        for block in blocks[last + 1:]:
            conv = block._depthwise_conv
            conv.dilation = (2, 2)
            conv.static_padding = nn.ZeroPad2d(conv.kernel_size[0] - 1)
    elif encoder.name.startswith("resnet"):
        seen_strided = False
        for conv in (m for m in encoder.body[-1].modules() if isinstance(m, nn.Conv2d)):
            if max(conv.stride) == 2:
                conv.stride = (1, 1)
                seen_strided |= conv.kernel_size[0] > 1
            elif seen_strided and conv.kernel_size[0] > 1:
                _dilate(conv)
    elif encoder.name == "densenet121":
        stages = [m for m in encoder.body.modules() if isinstance(m, (_Transition, _DenseBlock))]
        last = max(i for i, m in enumerate(stages) if isinstance(m, _Transition))
        stages[last].pool = nn.Identity()
        for conv in (m for m in stages[last + 1].modules() if isinstance(m, nn.Conv2d)):
            if conv.kernel_size[0] > 1:
                _dilate(conv)
    else:
        raise ValueError(f"no dilation rule for encoder {encoder.name!r}")


def set_grid(encoder: ImageEncoder, grid: str) -> ImageEncoder:
    """Make `encoder` end on the named grid (in place; pretrained weights already loaded)."""
    if grid not in GRIDS:
        raise ValueError(f"the classifier grid must be one of {', '.join(GRIDS)}, not {grid!r}")
    if grid in ("fine", "truncated"):
        _truncate(encoder)
    if grid in ("fine", "dilated"):
        _dilate_last_stage(encoder)
    return encoder
