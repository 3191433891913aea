"""MobileNetV2 of the CRD benchmark (official ``mobile_half``: expansion 6, width 0.5).

Same architecture, module names and initialisation as ``models/mobilenetv2.py``
of HobbitLong/RepDistiller (the CIFAR MobileNetV2 of "Knowledge Distillation
via Route Constrained Optimization"): stem ``conv1`` (3x3 stride 2), seven
``blocks`` of inverted residuals, ``conv2`` (1x1 to 1280 channels), a 2x2
average pool and ``classifier`` = ``Sequential(Linear)``. Registered as
``MobileNetV2`` (RepDistiller's model_dict name), aliases ``mobile_half`` and
``mobilenetv2``.

Features (``forward_features``), 6 tensors::

    feats = [conv1(x), blocks[1], blocks[2], blocks[4], blocks[6], pooled]

(``blocks[k]`` = output of stage k after running stages 0..k; stem and
``pooled`` are post-ReLU, the block outputs are linear-bottleneck outputs,
which have no ReLU.) Official quirk, kept: the official ``forward`` ignores
``preact``, so ``preact_feats`` is the very same list as ``feats``. Also
official: ``get_bn_before_relu`` returns the last BatchNorm of
``blocks[1]/[2]/[4]/[6]``, although for residual blocks the feature is that
BatchNorm's output *plus* the block input.
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import init_msra_fan_out
from .features import FeatureModel, FeatureOutput
from .registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2_T_w", "mobile_half"]


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """pw-expand (BN, ReLU) -> 3x3 depthwise (BN, ReLU) -> pw-linear (BN), + input if shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError("stride must be 1 or 2")
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        hidden = inp * expand_ratio
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(FeatureModel):
    # t (expansion), c (channels), n (blocks), s (stride of the first block)
    SETTING = [
        [1, 16, 1, 1],
        [None, 24, 2, 1],
        [None, 32, 3, 2],
        [None, 64, 4, 2],
        [None, 96, 3, 1],
        [None, 160, 3, 2],
        [None, 320, 1, 1],
    ]

    def __init__(self, T: int, num_classes: int = 100, input_size: int = 32, width_mult: float = 1.0,
                 remove_avg: bool = False):
        super().__init__()
        if input_size % 32 != 0:
            raise ValueError("input_size must be a multiple of 32")
        self.remove_avg = remove_avg
        self.interverted_residual_setting = [[t if t is not None else T, c, n, s] for t, c, n, s in self.SETTING]

        input_channel = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, input_channel, 3, 2)
        self.blocks = nn.ModuleList([])
        widths = [input_channel]
        for t, c, n, s in self.interverted_residual_setting:
            output_channel = int(c * width_mult)
            stage = []
            for stride in [s] + [1] * (n - 1):
                stage.append(InvertedResidual(input_channel, output_channel, stride, t))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*stage))
            widths.append(output_channel)

        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(input_channel, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)
        self._channels = [widths[0], widths[2], widths[3], widths[5], widths[7], self.last_channel]
        init_msra_fan_out(self, linear_std=0.01)

    def _head(self, out: torch.Tensor) -> torch.Tensor:
        out = self.conv2(out)
        if not self.remove_avg:
            out = self.avgpool(out)
        return torch.flatten(out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for stage in self.blocks:
            out = stage(out)
        return self.classifier(self._head(out))

    def forward_features(self, x: torch.Tensor) -> FeatureOutput:
        f0 = self.conv1(x)
        f1 = self.blocks[1](self.blocks[0](f0))
        f2 = self.blocks[2](f1)
        f3 = self.blocks[4](self.blocks[3](f2))
        f4 = self.blocks[6](self.blocks[5](f3))
        f5 = self._head(f4)
        logits = self.classifier(f5)
        feats = [f0, f1, f2, f3, f4, f5]
        return FeatureOutput(logits, feats, list(feats))

    def feature_channels(self) -> list[int]:
        return list(self._channels)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.blocks])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.blocks[i][-1].conv[-1] for i in (1, 2, 4, 6)]


def mobilenetv2_T_w(T: int, W: float, feature_dim: int = 100) -> MobileNetV2:
    """Official helper: expansion ``T``, width multiplier ``W``, ``feature_dim`` classes."""
    return MobileNetV2(T=T, num_classes=feature_dim, width_mult=W)


@register_model("MobileNetV2", aliases=["mobile_half", "mobilenetv2"])
def mobile_half(num_classes: int = 100) -> MobileNetV2:
    return mobilenetv2_T_w(6, 0.5, num_classes)
