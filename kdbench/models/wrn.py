"""Wide ResNets of the CRD benchmark: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2; and of OFD's CIFAR-100
settings: wrn_16_4, wrn_28_2, wrn_28_4.

Same architecture, module names and initialisation as ``models/wrn.py`` of
HobbitLong/RepDistiller (pre-activation WRN-d-k for 32x32 inputs). OFD's
``CIFAR-100/models/WideResNet.py`` (clovaai/overhaul-distillation) is the same
network: same state-dict keys and shapes, forward, initialisation, and the same
``extract_feature(preReLU=True)`` / ``get_bn_before_relu`` tensors as our
``preact_feats[1:4]`` / ``get_bn_before_relu`` (the layout its published WRN-28-4
checkpoint needs for a strict load).

Features (``forward_features``), 5 tensors each::

    feats        = [conv1(x), block1, block2, block3, pooled]
    preact_feats = [conv1(x), block2.layer[0].bn1(block1), block3.layer[0].bn1(block2),
                    bn1(block3), pooled]

The network is pre-activation, so the stage outputs ``blockK`` are sums
without BN/ReLU; the "pre-ReLU" tensors of the official ``preact=True`` mode
are those stage outputs passed through the *next* BatchNorm (the one before
the next ReLU), i.e. exactly the modules of :meth:`WideResNet.get_bn_before_relu`.
``feats[0]`` is the raw stem convolution (no BN, no ReLU) in both lists.

Official quirk, not reproduced: the official ``forward(is_feat=True,
preact=True)`` calls those three BatchNorms a *second* time on the stage
outputs. The values are identical to ours (same input, same batch
statistics), but in training mode the second call also updates their
running statistics and ``num_batches_tracked`` twice per step (this happens
in RepDistiller only for AB, whose main loop uses ``preact=True`` on a
training-mode student, and in OFD's ``extract_feature(preReLU=True)``). We
take the pre-ReLU tensors from the single forward pass instead; a method that
wants the official side effect calls
:meth:`WideResNet.replay_official_preact_bn_update` after ``forward_features``
(verified to leave exactly the official running statistics).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import init_msra_fan_out
from .features import FeatureModel, FeatureOutput
from .registry import register_model

__all__ = ["BasicBlock", "NetworkBlock", "WideResNet", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
           "wrn_16_4", "wrn_28_2", "wrn_28_4"]


class BasicBlock(nn.Module):
    """Pre-activation block ``BN-ReLU-conv-BN-ReLU-conv (+ shortcut)``.

    ``forward(x, return_preact=True)`` returns ``(out, bn1(x))``: the pre-ReLU
    tensor of this block's *input*.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropRate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.droprate = dropRate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor, return_preact: bool = False):
        preact = self.bn1(x)
        act = F.relu(preact) if return_preact else self.relu1(preact)
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.conv2(out)
        # identity shortcut takes the raw input; the 1x1 projection the activated one
        out = (x if self.equalInOut else self.convShortcut(act)) + out
        return (out, preact) if return_preact else out


class NetworkBlock(nn.Module):
    """One stage (``.layer`` is the Sequential of blocks, as in the official keys).

    ``forward(x, return_preact=True)`` returns ``(out, bn1_of_first_block(x))``.
    """

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, block, stride: int, dropRate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(*[
            block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropRate)
            for i in range(nb_layers)
        ])

    def forward(self, x: torch.Tensor, return_preact: bool = False):
        if not return_preact:
            return self.layer(x)
        out, preact = self.layer[0](x, return_preact=True)
        for block in self.layer[1:]:
            out = block(out)
        return out, preact


class WideResNet(FeatureModel):
    """WRN-depth-widen_factor, ``depth = 6n+4``.

    ``get_bn_before_relu`` returns ``[block2.layer[0].bn1, block3.layer[0].bn1, bn1]``
    (aligned with ``preact_feats[1:4]``), as the official code.
    """

    def __init__(self, depth: int, num_classes: int = 100, widen_factor: int = 1, dropRate: float = 0.0):
        super().__init__()
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        if (depth - 4) % 6 != 0:
            raise ValueError("WRN depth must be 6n+4")
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], BasicBlock, 1, dropRate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], BasicBlock, 2, dropRate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], BasicBlock, 2, dropRate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)
        self.nChannels = channels[3]
        self._channels = channels
        init_msra_fan_out(self, linear_std=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(torch.flatten(F.avg_pool2d(out, 8), 1))

    def forward_features(self, x: torch.Tensor) -> FeatureOutput:
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2, f1_pre = self.block2(f1, return_preact=True)
        f3, f2_pre = self.block3(f2, return_preact=True)
        f3_pre = self.bn1(f3)
        f4 = torch.flatten(F.avg_pool2d(F.relu(f3_pre), 8), 1)
        logits = self.fc(f4)
        return FeatureOutput(logits, [f0, f1, f2, f3, f4], [f0, f1_pre, f2_pre, f3_pre, f4])

    def feature_channels(self) -> list[int]:
        c = self._channels
        return [c[0], c[1], c[2], c[3], c[3]]

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.block1, self.block2, self.block3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    @torch.no_grad()
    def replay_official_preact_bn_update(self, feats: list[torch.Tensor]) -> None:
        """Re-run the BatchNorms of ``get_bn_before_relu()`` on ``feats[1:4]``.

        In training mode this updates their running statistics (and
        ``num_batches_tracked``) a second time, as the official
        ``forward(is_feat=True, preact=True)`` does; outputs are discarded. No-op in
        eval mode.
        """
        if self.training:
            for bn, f in zip(self.get_bn_before_relu(), feats[1:4]):
                bn(f)


@register_model
def wrn_16_1(num_classes: int = 100, **kwargs) -> WideResNet:
    return WideResNet(depth=16, widen_factor=1, num_classes=num_classes, **kwargs)


@register_model
def wrn_16_2(num_classes: int = 100, **kwargs) -> WideResNet:
    return WideResNet(depth=16, widen_factor=2, num_classes=num_classes, **kwargs)


@register_model
def wrn_40_1(num_classes: int = 100, **kwargs) -> WideResNet:
    return WideResNet(depth=40, widen_factor=1, num_classes=num_classes, **kwargs)


@register_model
def wrn_40_2(num_classes: int = 100, **kwargs) -> WideResNet:
    return WideResNet(depth=40, widen_factor=2, num_classes=num_classes, **kwargs)


# OFD's CIFAR-100 settings (clovaai/overhaul-distillation, CIFAR-100/models/WideResNet.py): the same
# WideResNet class (same state-dict keys, forward and initialisation), other depths and widths.
@register_model
def wrn_16_4(num_classes: int = 100, **kwargs) -> WideResNet:
    return WideResNet(depth=16, widen_factor=4, num_classes=num_classes, **kwargs)


@register_model
def wrn_28_2(num_classes: int = 100, **kwargs) -> WideResNet:
    return WideResNet(depth=28, widen_factor=2, num_classes=num_classes, **kwargs)


@register_model
def wrn_28_4(num_classes: int = 100, **kwargs) -> WideResNet:
    return WideResNet(depth=28, widen_factor=4, num_classes=num_classes, **kwargs)
