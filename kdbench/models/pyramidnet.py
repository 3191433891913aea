"""PyramidNet for CIFAR (Han et al., "Deep Pyramidal Residual Networks"), in the layout of OFD's
``CIFAR-100/models/PyramidNet.py`` (clovaai/overhaul-distillation @76344a8), so that its published
PyramidNet-200 (alpha 240) teacher loads with ``strict=True``.

The channel count grows by ``alpha / (3 n)`` per block (rounded), blocks are pre-activation style
(``bn1`` first, no ReLU after the block's last BN), a stride-2 stage starts with a 2x2 average-pool
shortcut and a shortcut with fewer channels is zero-padded. ``pyramidnet200``: bottleneck blocks,
n = 22, alpha 240 (26.84M parameters); ``pyramidnet110``: basic blocks, n = 18, alpha 84 (3.91M).

Features (``forward_features``): ``feats = [stem (bn1(conv1 x), no ReLU), layer1..3 outputs, pooled]``.
``preact_feats[1:3]`` are the tensors OFD's ``extract_feature(preReLU=True)`` distils: the first
pre-ReLU tensor *inside the next stage's first block* -- for bottleneck blocks ``bn2(conv1(bn1(f)))``
(so its channel count is that block's width, not ``f``'s), for basic blocks ``bn1(f)``; then
``bn_final(layer3)`` and the pooled vector. They come from the same forward pass, and
``get_bn_before_relu()`` returns the BatchNorms that produce them (for basic blocks OFD's own
``get_bn_before_relu`` names ``bn2`` instead, which does not match its own features; it is only used
for a teacher, and no OFD setting has a basic-block PyramidNet teacher).

Two differences from the rest of the zoo (``features.py``): for the bottleneck model
``preact_feats[1:3]`` do not have the shapes of ``feats[1:3]`` (100 and 180 channels for
pyramidnet200, where the stage outputs have 384 and 704; ``feature_channels()`` gives those of
``feats``); and a block's ``bn1`` feeds a convolution, not a ReLU, so for basic blocks the tensor OFD
distils, ``bn1(f)``, is not followed by a ReLU in the network (the stem ``bn1(conv1 x)`` is not either).

The zero channels of the shortcut are created on the input's device and dtype (the official code
allocates them with ``torch.cuda.FloatTensor``, so it runs on CUDA only).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .features import FeatureModel, FeatureOutput
from .registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "PyramidNet", "pyramidnet110", "pyramidnet200"]


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


def _add_shortcut(out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    extra = out.shape[1] - shortcut.shape[1]
    if extra:
        shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, extra))  # zero channels after the shortcut's
    return out + shortcut


class BasicBlock(nn.Module):
    outchannel_ratio = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn3 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x, return_inner: bool = False):
        inner = self.bn1(x)
        out = self.bn3(self.conv2(self.relu(self.bn2(self.conv1(inner)))))
        out = _add_shortcut(out, x if self.downsample is None else self.downsample(x))
        return (out, inner) if return_inner else out


class Bottleneck(nn.Module):
    outchannel_ratio = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn4 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x, return_inner: bool = False):
        inner = self.bn2(self.conv1(self.bn1(x)))
        out = self.relu(self.bn3(self.conv2(F.relu(inner))))  # not in place: ``inner`` is a feature
        out = self.bn4(self.conv3(out))
        out = _add_shortcut(out, x if self.downsample is None else self.downsample(x))
        return (out, inner) if return_inner else out


class PyramidNet(FeatureModel):
    def __init__(self, depth: int, alpha: float, num_classes: int = 100, bottleneck: bool = False):
        super().__init__()
        block = Bottleneck if bottleneck else BasicBlock
        n = (depth - 2) // 9 if bottleneck else (depth - 2) // 6
        self.addrate = alpha / (3 * n * 1.0)
        self.input_dim = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.dim = 16.0
        self.layer1 = self._make_layer(block, n)
        self.layer2 = self._make_layer(block, n, stride=2)
        self.layer3 = self._make_layer(block, n, stride=2)
        self.final_dim = self.input_dim
        self.bn_final = nn.BatchNorm2d(self.final_dim)
        self.relu_final = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(self.final_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def _make_layer(self, block, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = nn.AvgPool2d((2, 2), stride=(2, 2), ceil_mode=True) if stride != 1 else None
        self.dim += self.addrate
        layers = [block(self.input_dim, int(round(self.dim)), stride, downsample)]
        for _ in range(1, blocks):
            nxt = self.dim + self.addrate
            layers.append(block(int(round(self.dim)) * block.outchannel_ratio, int(round(nxt)), 1))
            self.dim = nxt
        self.input_dim = int(round(self.dim)) * block.outchannel_ratio
        return nn.Sequential(*layers)

    def _head(self, f3_pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.flatten(self.avgpool(F.relu(f3_pre)), 1)  # relu_final is in place; f3_pre is a feature
        return self.fc(pooled), pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.bn1(self.conv1(x)))))
        return self._head(self.bn_final(x))[0]

    @staticmethod
    def _stage(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stage's output and its first block's inner pre-ReLU tensor."""
        x, inner = stage[0](x, return_inner=True)
        for block in stage[1:]:
            x = block(x)
        return x, inner

    def forward_features(self, x: torch.Tensor) -> FeatureOutput:
        f0 = self.bn1(self.conv1(x))
        f1 = self.layer1(f0)
        f2, f1_pre = self._stage(self.layer2, f1)
        f3, f2_pre = self._stage(self.layer3, f2)
        f3_pre = self.bn_final(f3)
        logits, pooled = self._head(f3_pre)
        return FeatureOutput(logits, [f0, f1, f2, f3, pooled], [f0, f1_pre, f2_pre, f3_pre, pooled])

    def feature_channels(self) -> list[int]:
        """Channels of ``feats`` (``preact_feats[1:3]`` of a bottleneck model have the inner width)."""
        return [16, self.layer2[0].bn1.num_features, self.layer3[0].bn1.num_features, self.final_dim, self.final_dim]

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        if isinstance(self.layer1[0], Bottleneck):
            return [self.layer2[0].bn2, self.layer3[0].bn2, self.bn_final]
        return [self.layer2[0].bn1, self.layer3[0].bn1, self.bn_final]

    @torch.no_grad()
    def replay_official_preact_bn_update(self, feats: list[torch.Tensor]) -> None:
        """OFD's ``extract_feature(preReLU=True)`` recomputes the pre-ReLU tensors from ``feats[1:4]``
        with the modules of the next block, so in training mode their BatchNorms update their running
        statistics a second time; this repeats that side effect (outputs discarded; no-op in eval)."""
        if not self.training:
            return
        for stage, f in ((self.layer2, feats[1]), (self.layer3, feats[2])):
            block = stage[0]
            inner = block.bn1(f)
            if isinstance(block, Bottleneck):
                block.bn2(block.conv1(inner))
        self.bn_final(feats[3])


@register_model
def pyramidnet200(num_classes: int = 100) -> PyramidNet:
    """PyramidNet-200 (alpha 240, bottleneck): OFD's CIFAR-100 teacher of settings (e) and (f)."""
    return PyramidNet(depth=200, alpha=240, num_classes=num_classes, bottleneck=True)


@register_model
def pyramidnet110(num_classes: int = 100) -> PyramidNet:
    """PyramidNet-110 (alpha 84, basic blocks): OFD's student of setting (f)."""
    return PyramidNet(depth=110, alpha=84, num_classes=num_classes, bottleneck=False)
