"""VGG with BatchNorm for 32x32 inputs: vgg8, vgg11, vgg13, vgg16, vgg19.

Same architecture, module names and initialisation as ``models/vgg.py`` of
HobbitLong/RepDistiller: five conv blocks ``block0..block4`` (each a
Sequential ``conv, bn, relu, ..., conv, bn`` - the last ReLU is dropped and
applied in ``forward``), max-pools ``pool0..pool3`` between them, a global
average pool ``pool4`` and a single ``classifier`` Linear(512, classes).
As in RepDistiller's ``model_dict``, the names ``vgg8`` ... ``vgg19`` are the
BatchNorm variants (official ``vgg8_bn`` ... ``vgg19_bn``, also accepted as
aliases). Quirk kept: ``pool3`` is only applied for 64x64 inputs (input height
64), so on CIFAR ``block3`` and ``block4`` both run at 4x4.

Features (``forward_features``), 6 tensors each::

    feats        = [relu(block0(x)), relu(block1), relu(block2), relu(block3), relu(block4), pooled]
    preact_feats = [relu(block0(x)), block1,       block2,       block3,       block4,       pooled]

(``blockK`` = output of block K, which ends with BatchNorm.) Official quirk,
kept: ``preact_feats[0]`` is the *post*-ReLU output of block0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import init_msra_fan_out
from .features import FeatureModel, FeatureOutput
from .registry import register_model

__all__ = ["VGG", "cfg", "vgg8_bn", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]

cfg = {
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
    "S": [[64], [128], [256], [512], [512]],
}


def _make_block(widths: list, batch_norm: bool, in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for v in widths:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return nn.Sequential(*layers[:-1])  # the block's final ReLU is applied by the model


class VGG(FeatureModel):
    """``get_bn_before_relu`` returns the last module of ``block1..block4`` (the
    BatchNorms, with ``batch_norm=True``), aligned with ``preact_feats[1:5]``, as
    the official code."""

    def __init__(self, cfg: list[list], batch_norm: bool = False, num_classes: int = 100):
        super().__init__()
        self.block0 = _make_block(cfg[0], batch_norm, 3)
        self.block1 = _make_block(cfg[1], batch_norm, cfg[0][-1])
        self.block2 = _make_block(cfg[2], batch_norm, cfg[1][-1])
        self.block3 = _make_block(cfg[3], batch_norm, cfg[2][-1])
        self.block4 = _make_block(cfg[4], batch_norm, cfg[3][-1])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)
        self._widths = [c[-1] for c in cfg]
        init_msra_fan_out(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        x = F.relu(self.block0(x))
        x = F.relu(self.block1(self.pool0(x)))
        x = F.relu(self.block2(self.pool1(x)))
        x = F.relu(self.block3(self.pool2(x)))
        if h == 64:
            x = self.pool3(x)
        x = F.relu(self.block4(x))
        return self.classifier(torch.flatten(self.pool4(x), 1))

    def forward_features(self, x: torch.Tensor) -> FeatureOutput:
        h = x.shape[2]
        f0 = F.relu(self.block0(x))
        f1_pre = self.block1(self.pool0(f0))
        f1 = F.relu(f1_pre)
        f2_pre = self.block2(self.pool1(f1))
        f2 = F.relu(f2_pre)
        f3_pre = self.block3(self.pool2(f2))
        f3 = F.relu(f3_pre)
        f4_pre = self.block4(self.pool3(f3) if h == 64 else f3)
        f4 = F.relu(f4_pre)
        f5 = torch.flatten(self.pool4(f4), 1)
        logits = self.classifier(f5)
        return FeatureOutput(logits, [f0, f1, f2, f3, f4, f5], [f0, f1_pre, f2_pre, f3_pre, f4_pre, f5])

    def feature_channels(self) -> list[int]:
        return [*self._widths, self.classifier.in_features]

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([
            self.block0, self.pool0, self.block1, self.pool1, self.block2, self.pool2,
            self.block3, self.pool3, self.block4, self.pool4,
        ])

    def get_bn_before_relu(self) -> list[nn.Module]:
        return [self.block1[-1], self.block2[-1], self.block3[-1], self.block4[-1]]


@register_model("vgg8", aliases=["vgg8_bn"])
def vgg8_bn(num_classes: int = 100) -> VGG:
    return VGG(cfg["S"], batch_norm=True, num_classes=num_classes)


@register_model("vgg11", aliases=["vgg11_bn"])
def vgg11_bn(num_classes: int = 100) -> VGG:
    return VGG(cfg["A"], batch_norm=True, num_classes=num_classes)


@register_model("vgg13", aliases=["vgg13_bn"])
def vgg13_bn(num_classes: int = 100) -> VGG:
    return VGG(cfg["B"], batch_norm=True, num_classes=num_classes)


@register_model("vgg16", aliases=["vgg16_bn"])
def vgg16_bn(num_classes: int = 100) -> VGG:
    return VGG(cfg["D"], batch_norm=True, num_classes=num_classes)


@register_model("vgg19", aliases=["vgg19_bn"])
def vgg19_bn(num_classes: int = 100) -> VGG:
    return VGG(cfg["E"], batch_norm=True, num_classes=num_classes)
