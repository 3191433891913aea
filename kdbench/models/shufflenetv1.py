"""ShuffleNetV1 (g=3) for 32x32 inputs: ``ShuffleV1`` (alias ``shufflev1``).

Same architecture and module names as ``models/ShuffleNetv1.py`` of
HobbitLong/RepDistiller: a 1x1 stem ``conv1``/``bn1`` (24 channels, no
downsampling), three stages ``layer1..layer3`` of 4/8/4 bottlenecks with 240,
480, 960 channels (each stage starts with a stride-2 block whose output is
``cat([branch, avgpool(x)])``), 4x4 average pool and ``linear``. Like the
official code it uses PyTorch's default initialisation.

Features (``forward_features``), 5 tensors::

    feats        = [relu(bn1(conv1(x))), layer1,     layer2,     layer3,     pooled]
    preact_feats = [relu(bn1(conv1(x))), layer1_pre, layer2_pre, layer3_pre, pooled]

``layerK_pre`` is ``bn3(conv3(.)) + x`` of the stage's last (stride-1) block,
before its ReLU. Official quirk, kept: ``preact_feats[0]`` is post-ReLU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import PreactStage, channel_shuffle
from .features import FeatureModel, FeatureOutput
from .registry import register_model

__all__ = ["ShuffleBlock", "Bottleneck", "ShuffleNet", "ShuffleV1"]


class ShuffleBlock(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)


class Bottleneck(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid_planes = int(out_planes / 4)
        g = 1 if in_planes == 24 else groups  # the first block after the stem is not grouped
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1,
                               groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def forward(self, x: torch.Tensor, return_preact: bool = False):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.shuffle1(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
        out = F.relu(preact)
        return (out, preact) if return_preact else out


class ShuffleNet(FeatureModel):
    """``get_bn_before_relu``: the official code raises NotImplementedError here. We
    implement it the way the official ResNets do (the architecture makes it
    obvious): the ``bn3`` of the last block of each stage - a stride-1 block
    whose pre-ReLU output is ``bn3(...) + x`` with the full stage width - aligned
    with ``preact_feats[1:4]``."""

    def __init__(self, cfg: dict, num_classes: int = 100):
        super().__init__()
        out_planes = cfg["out_planes"]
        num_blocks = cfg["num_blocks"]
        groups = cfg["groups"]
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)
        self._channels = [24, *out_planes, out_planes[2]]

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> PreactStage:
        layers = []
        for i in range(num_blocks):
            # the stride-2 first block concatenates its (pooled) input to the branch
            cat_planes = self.in_planes if i == 0 else 0
            layers.append(Bottleneck(self.in_planes, out_planes - cat_planes, stride=2 if i == 0 else 1,
                                     groups=groups))
            self.in_planes = out_planes
        return PreactStage(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(F.avg_pool2d(out, 4), 1))

    def forward_features(self, x: torch.Tensor) -> FeatureOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = self.layer1(f0, return_preact=True)
        f2, f2_pre = self.layer2(f1, return_preact=True)
        f3, f3_pre = self.layer3(f2, return_preact=True)
        f4 = torch.flatten(F.avg_pool2d(f3, 4), 1)
        logits = self.linear(f4)
        return FeatureOutput(logits, [f0, f1, f2, f3, f4], [f0, f1_pre, f2_pre, f3_pre, f4])

    def feature_channels(self) -> list[int]:
        return list(self._channels)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.layer1[-1].bn3, self.layer2[-1].bn3, self.layer3[-1].bn3]


@register_model("ShuffleV1", aliases=["shufflev1"])
def ShuffleV1(num_classes: int = 100) -> ShuffleNet:
    return ShuffleNet({"out_planes": [240, 480, 960], "num_blocks": [4, 8, 4], "groups": 3},
                      num_classes=num_classes)
