"""Small building blocks shared by the CIFAR model families.

Nothing here has parameters of its own, so none of it shows up in a state
dict: checkpoints only see the module names chosen by each family file.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class PreactStage(nn.Sequential):
    """A stage of residual blocks that can also hand back the last pre-ReLU tensor.

    It is a plain :class:`nn.Sequential` (so the state-dict keys are
    ``<stage>.<i>.<param>``, exactly as the official code's), whose
    ``forward(x, return_preact=True)`` runs every block normally and asks the
    *last* block for ``(out, preact)``. That is precisely what the official
    ``is_last`` flag did: only the last block of a stage exposes its
    pre-activation tensor. Every block placed in a ``PreactStage`` must
    accept ``return_preact`` as keyword (the first blocks are called without
    it).
    """

    def forward(self, x: torch.Tensor, return_preact: bool = False):  # type: ignore[override]
        last = len(self) - 1
        for i, block in enumerate(self):
            if return_preact and i == last:
                return block(x, return_preact=True)
            x = block(x)
        return x


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[N, C, H, W] -> [N, g, C/g, H, W] -> [N, C/g, g, H, W] -> [N, C, H, W]``.

    Uses ``reshape`` so it also works on ``channels_last`` / non-contiguous inputs.
    """
    n, c, h, w = x.shape
    if groups == 1:
        return x
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def init_kaiming_fan_out(model: nn.Module) -> None:
    """Init of the official CIFAR ResNets (resnet.py / resnetv2.py).

    Conv weights ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``,
    BatchNorm/GroupNorm weight 1 and bias 0; Linear layers keep PyTorch's default.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def init_msra_fan_out(model: nn.Module, linear_std: float | None) -> None:
    """Init of the official WRN / VGG / MobileNetV2 code.

    Conv weights ``N(0, sqrt(2 / (k_h * k_w * out_channels)))`` and zero bias,
    BatchNorm weight 1 and bias 0. Linear: bias 0 always; the weight is drawn from
    ``N(0, linear_std)`` when ``linear_std`` is given (VGG, MobileNetV2: 0.01)
    and keeps PyTorch's default otherwise (WRN).
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.normal_(0, math.sqrt(2.0 / n))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1)
                m.bias.zero_()
            elif isinstance(m, nn.Linear):
                if linear_std is not None:
                    m.weight.normal_(0, linear_std)
                m.bias.zero_()
