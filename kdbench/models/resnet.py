"""CIFAR ResNets of the CRD benchmark: resnet8 ... resnet110, resnet8x4, resnet32x4.

Same architecture, module names and initialisation as ``models/resnet.py`` of
HobbitLong/RepDistiller (a 3-stage ResNet for 32x32 inputs after
fb.resnet.torch), so the published ``<model>_vanilla/ckpt_epoch_240.pth``
teachers load with ``strict=True``. Modules are created in the official order,
so with the same RNG seed the initial weights are identical too.

Features (``forward_features``), 5 tensors each, 32x32 input::

    feats        = [relu(bn1(conv1(x))), layer1, layer2, layer3, pooled]
    preact_feats = [relu(bn1(conv1(x))), layer1_pre, layer2_pre, layer3_pre, pooled]

``layerK`` is the stage output (after the last block's ReLU), ``layerK_pre``
the last block's ``bn(conv(.)) + shortcut`` before that ReLU. Official quirk,
kept: ``preact_feats[0]`` is the *post*-ReLU stem output (the official code
never exposes the pre-ReLU stem), and ``pooled`` is the same tensor in both
lists.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import PreactStage, init_kaiming_fan_out
from .features import FeatureModel, FeatureOutput
from .registry import register_model

__all__ = [
    "BasicBlock", "Bottleneck", "ResNet",
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4",
]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor, return_preact: bool = False):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        preact = out
        out = F.relu(preact)
        return (out, preact) if return_preact else out


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor, return_preact: bool = False):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        preact = out
        out = F.relu(preact)
        return (out, preact) if return_preact else out


class ResNet(FeatureModel):
    """3-stage CIFAR ResNet: ``depth = 6n+2`` (basic blocks) or ``9n+2`` (bottlenecks).

    ``num_filters = [stem, stage1, stage2, stage3]`` widths. ``get_bn_before_relu``
    returns the last BatchNorm of the last block of each stage (3 modules, aligned
    with ``preact_feats[1:4]``), as the official code.
    """

    def __init__(self, depth: int, num_filters: list[int], block_name: str = "BasicBlock",
                 num_classes: int = 100):
        super().__init__()
        if block_name.lower() == "basicblock":
            if (depth - 2) % 6 != 0:
                raise ValueError("with BasicBlock, depth must be 6n+2 (20, 32, 44, 56, 110, ...)")
            n, block = (depth - 2) // 6, BasicBlock
        elif block_name.lower() == "bottleneck":
            if (depth - 2) % 9 != 0:
                raise ValueError("with Bottleneck, depth must be 9n+2 (29, 47, 56, 110, ...)")
            n, block = (depth - 2) // 9, Bottleneck
        else:
            raise ValueError("block_name must be 'BasicBlock' or 'Bottleneck'")
        self.block = block
        self.num_filters = list(num_filters)

        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, num_filters[1], n)
        self.layer2 = self._make_layer(block, num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(block, num_filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)  # as official: 32x32 inputs give an 8x8 map here
        self.fc = nn.Linear(num_filters[3] * block.expansion, num_classes)
        init_kaiming_fan_out(self)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> PreactStage:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return PreactStage(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward_features(self, x: torch.Tensor) -> FeatureOutput:
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = self.layer1(f0, return_preact=True)
        f2, f2_pre = self.layer2(f1, return_preact=True)
        f3, f3_pre = self.layer3(f2, return_preact=True)
        f4 = torch.flatten(self.avgpool(f3), 1)
        logits = self.fc(f4)
        return FeatureOutput(logits, [f0, f1, f2, f3, f4], [f0, f1_pre, f2_pre, f3_pre, f4])

    def feature_channels(self) -> list[int]:
        e = self.block.expansion
        nf = self.num_filters
        return [nf[0], nf[1] * e, nf[2] * e, nf[3] * e, nf[3] * e]

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.relu, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        last = "bn3" if self.block is Bottleneck else "bn2"
        return [getattr(layer[-1], last) for layer in (self.layer1, self.layer2, self.layer3)]


@register_model
def resnet8(num_classes: int = 100) -> ResNet:
    return ResNet(8, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


@register_model
def resnet14(num_classes: int = 100) -> ResNet:
    return ResNet(14, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


@register_model
def resnet20(num_classes: int = 100) -> ResNet:
    return ResNet(20, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


@register_model
def resnet32(num_classes: int = 100) -> ResNet:
    return ResNet(32, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


@register_model
def resnet44(num_classes: int = 100) -> ResNet:
    return ResNet(44, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


@register_model
def resnet56(num_classes: int = 100) -> ResNet:
    return ResNet(56, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


@register_model
def resnet110(num_classes: int = 100) -> ResNet:
    return ResNet(110, [16, 16, 32, 64], "basicblock", num_classes=num_classes)


@register_model
def resnet8x4(num_classes: int = 100) -> ResNet:
    return ResNet(8, [32, 64, 128, 256], "basicblock", num_classes=num_classes)


@register_model
def resnet32x4(num_classes: int = 100) -> ResNet:
    return ResNet(32, [32, 64, 128, 256], "basicblock", num_classes=num_classes)
