"""ShuffleNetV2 (1x) for 32x32 inputs: ``ShuffleV2`` (alias ``shufflev2``).

Same architecture and module names as ``models/ShuffleNetv2.py`` of
HobbitLong/RepDistiller: a 1x1 stem ``conv1``/``bn1`` (24 channels, no
max-pool), three stages ``layer1..layer3`` (a ``DownBlock`` then 3/7/3
``BasicBlock``s; 116, 232, 464 channels), ``conv2``/``bn2`` (1x1 to 1024),
4x4 average pool and ``linear``. PyTorch's default initialisation, as the
official code.

Features (``forward_features``), 5 tensors::

    feats        = [relu(bn1(conv1(x))), layer1,     layer2,     layer3,     pooled]
    preact_feats = [relu(bn1(conv1(x))), layer1_pre, layer2_pre, layer3_pre, pooled]

``pooled`` (1024-d) comes after ``relu(bn2(conv2(layer3)))``. Official quirks,
kept:

* ``preact_feats[0]`` is the post-ReLU stem output;
* ``layerK_pre`` of the stage's last block is ``cat([x1, bn3(conv3(.))])``
  taken *before* the channel shuffle, while ``layerK`` is
  ``shuffle(cat([x1, relu(bn3(conv3(.)))]))``: the two lists do not share a
  channel order, and the ``x1`` half of ``layerK_pre`` is the untouched
  (already activated) split input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import PreactStage, channel_shuffle
from .features import FeatureModel, FeatureOutput
from .registry import register_model

__all__ = ["ShuffleBlock", "SplitBlock", "BasicBlock", "DownBlock", "ShuffleNetV2", "configs", "ShuffleV2"]


class ShuffleBlock(nn.Module):
    def __init__(self, groups: int = 2):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)


class SplitBlock(nn.Module):
    def __init__(self, ratio: float):
        super().__init__()
        self.ratio = ratio

    def forward(self, x: torch.Tensor):
        c = int(x.size(1) * self.ratio)
        return x[:, :c], x[:, c:]


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split = SplitBlock(split_ratio)
        c = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.shuffle = ShuffleBlock()

    def forward(self, x: torch.Tensor, return_preact: bool = False):
        x1, x2 = self.split(x)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        branch_pre = self.bn3(self.conv3(out))
        out = self.shuffle(torch.cat([x1, F.relu(branch_pre)], 1))
        if return_preact:
            return out, torch.cat([x1, branch_pre], 1)  # unshuffled, as the official
        return out


class DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        # left branch: 3x3 dw stride 2 -> 1x1
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1,
                               groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch: 1x1 -> 3x3 dw stride 2 -> 1x1
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ShuffleBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


configs = {
    0.2: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 3, 3)},
    0.3: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 7, 3)},
    0.5: {"out_channels": (48, 96, 192, 1024), "num_blocks": (3, 7, 3)},
    1: {"out_channels": (116, 232, 464, 1024), "num_blocks": (3, 7, 3)},
    1.5: {"out_channels": (176, 352, 704, 1024), "num_blocks": (3, 7, 3)},
    2: {"out_channels": (224, 488, 976, 2048), "num_blocks": (3, 7, 3)},
}


class ShuffleNetV2(FeatureModel):
    """``get_bn_before_relu`` raises NotImplementedError, like the official code:
    the pre-ReLU features are half pass-through (``x1``), so no BatchNorm covers
    their channels and there is no obvious choice."""

    def __init__(self, net_size: float = 1, num_classes: int = 100):
        super().__init__()
        out_channels = configs[net_size]["out_channels"]
        num_blocks = configs[net_size]["num_blocks"]
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)
        self._channels = [24, *out_channels]

    def _make_layer(self, out_channels: int, num_blocks: int) -> PreactStage:
        layers: list[nn.Module] = [DownBlock(self.in_channels, out_channels)]
        layers += [BasicBlock(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return PreactStage(*layers)

    def _head(self, out: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn2(self.conv2(out)))
        return torch.flatten(F.avg_pool2d(out, 4), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self._head(out))

    def forward_features(self, x: torch.Tensor) -> FeatureOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = self.layer1(f0, return_preact=True)
        f2, f2_pre = self.layer2(f1, return_preact=True)
        f3, f3_pre = self.layer3(f2, return_preact=True)
        f4 = self._head(f3)
        logits = self.linear(f4)
        return FeatureOutput(logits, [f0, f1, f2, f3, f4], [f0, f1_pre, f2_pre, f3_pre, f4])

    def feature_channels(self) -> list[int]:
        return list(self._channels)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        raise NotImplementedError(
            "ShuffleV2 has no BatchNorm before the ReLU of its stage outputs: half of each "
            "pre-activation feature is the pass-through split input (same as the official code, "
            "which does not support it as an OFD teacher)")


@register_model("ShuffleV2", aliases=["shufflev2"])
def ShuffleV2(num_classes: int = 100) -> ShuffleNetV2:
    return ShuffleNetV2(net_size=1, num_classes=num_classes)
