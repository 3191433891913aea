"""Building blocks for methods with learnable connectors (FitNet, AB, CC, VID, ...).

* :func:`probe_features`: the features of a dummy batch, the way the official CRD-benchmark code
  sizes its connectors (``torch.randn(2, 3, 32, 32)`` through the model in eval mode);
* :func:`place_like`: put a connector on a model's device and memory format;
* :func:`match_spatial`: pool the larger of two maps to the smaller one's size;
* :class:`ConvReg`: the convolutional regressor from a student map to a teacher map's shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .models import FeatureOutput


@torch.no_grad()
def probe_features(model: nn.Module, image_size: int = 32) -> FeatureOutput:
    """``model.forward_features`` of ``randn(2, 3, S, S)`` in eval mode (BN statistics untouched);
    the model's mode is restored. Draws from the global RNG, as the official code does."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(2, 3, image_size, image_size, device=param.device, dtype=param.dtype)
        return model.forward_features(x)
    finally:
        model.train(was_training)


def memory_format_of(model: nn.Module) -> torch.memory_format:
    """channels_last if the model's conv weights are in it (the harness's default on CUDA)."""
    for p in model.parameters():
        if p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
    return torch.contiguous_format


def place_like(module: nn.Module, model: nn.Module) -> nn.Module:
    """``module`` moved to ``model``'s device and memory format."""
    return module.to(next(model.parameters()).device, memory_format=memory_format_of(model))


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two maps to (H, H) of the smaller one (the RepDistiller losses
    compare heights only and pool to a square), the smaller is returned unchanged."""
    ha, hb = a.shape[2], b.shape[2]
    if ha > hb:
        a = F.adaptive_avg_pool2d(a, (hb, hb))
    elif ha < hb:
        b = F.adaptive_avg_pool2d(b, (ha, ha))
    return a, b


class ConvReg(nn.Module):
    """Regressor from a student map to a teacher map's shape (RepDistiller ``models/util.py``
    ``ConvReg``): a 3x3 stride-2 conv when the student map is twice as large, a 4x4 transposed conv
    when half as large, else a valid conv whose kernel absorbs the size difference (1x1 for equal
    sizes); then BN, then ReLU if ``use_relu``. Shapes are ``(..., C, H, W)``; PyTorch's default init."""

    def __init__(self, s_shape, t_shape, use_relu: bool = True):
        super().__init__()
        (s_c, s_h, s_w), (t_c, t_h, t_w) = tuple(s_shape)[-3:], tuple(t_shape)[-3:]
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(f"no regressor from a {s_h}x{s_w} map to a {t_h}x{t_w} map")
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU(inplace=True)
        self.use_relu = use_relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.relu(x) if self.use_relu else x
