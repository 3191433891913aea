"""4-stage ResNets for 32x32 inputs (ResNet18, ResNet34, ResNet50) of the CRD benchmark.

Same architecture, module names and initialisation as ``models/resnetv2.py``
of HobbitLong/RepDistiller (kuangliu's pytorch-cifar ResNet: a 3x3 stride-1
stem, no max-pool, 4 stages, adaptive average pool, ``linear`` classifier).
Only ``ResNet50`` is in RepDistiller's ``model_dict`` (the CIFAR-100 teacher);
``ResNet18`` (mdistiller's student) and ``ResNet34`` are defined in the same
official file and registered here too.

Features (``forward_features``), 6 tensors each::

    feats        = [relu(bn1(conv1(x))), layer1, layer2, layer3, layer4, pooled]
    preact_feats = [relu(bn1(conv1(x))), layer1_pre, ..., layer4_pre, pooled]

Official quirk, kept: ``preact_feats[0]`` is the *post*-ReLU stem output.
(The official ``forward(is_feat=True, preact=True)`` also returns a
``[list, logits]`` list instead of a tuple; irrelevant here.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import PreactStage, init_kaiming_fan_out
from .features import FeatureModel, FeatureOutput
from .registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "ResNet18", "ResNet34", "ResNet50"]


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    if stride != 1 or in_planes != out_planes:
        return nn.Sequential(
            nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out_planes),
        )
    return nn.Sequential()  # identity, as the official (no parameters)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor, return_preact: bool = False):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        preact = out
        out = F.relu(preact)
        return (out, preact) if return_preact else out


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor, return_preact: bool = False):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x)
        preact = out
        out = F.relu(preact)
        return (out, preact) if return_preact else out


class ResNet(FeatureModel):
    """``get_bn_before_relu`` returns the last BatchNorm of the last block of each of
    the 4 stages (aligned with ``preact_feats[1:5]``), as the official code."""

    def __init__(self, block, num_blocks: list[int], num_classes: int = 100, zero_init_residual: bool = False):
        super().__init__()
        self.block = block
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        init_kaiming_fan_out(self)
        if zero_init_residual:  # off by default, as in the official code
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block, planes: int, num_blocks: int, stride: int) -> PreactStage:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return PreactStage(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.avgpool(out), 1))

    def forward_features(self, x: torch.Tensor) -> FeatureOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = self.layer1(f0, return_preact=True)
        f2, f2_pre = self.layer2(f1, return_preact=True)
        f3, f3_pre = self.layer3(f2, return_preact=True)
        f4, f4_pre = self.layer4(f3, return_preact=True)
        f5 = torch.flatten(self.avgpool(f4), 1)
        logits = self.linear(f5)
        return FeatureOutput(logits, [f0, f1, f2, f3, f4, f5], [f0, f1_pre, f2_pre, f3_pre, f4_pre, f5])

    def feature_channels(self) -> list[int]:
        e = self.block.expansion
        return [64, 64 * e, 128 * e, 256 * e, 512 * e, 512 * e]

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        last = "bn3" if self.block is Bottleneck else "bn2"
        return [getattr(layer[-1], last) for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]


@register_model(aliases=["resnet18"])
def ResNet18(num_classes: int = 100, **kwargs) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, **kwargs)


@register_model(aliases=["resnet34"])
def ResNet34(num_classes: int = 100, **kwargs) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, **kwargs)


@register_model(aliases=["resnet50"])
def ResNet50(num_classes: int = 100, **kwargs) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, **kwargs)
