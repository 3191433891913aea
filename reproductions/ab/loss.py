"""Heo, Lee, Yun, Choi, AAAI 2019, "Knowledge Transfer via Distillation of Activation Boundaries
Formed by Hidden Neurons" (AB, arXiv 1811.03233), as the CRD benchmark (RepDistiller) ran it."""
import torch
from torch import nn


def alternative_l2(source: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Summed hinge-squared loss on the activation boundary: where the teacher neuron is off
    (target <= 0) the student pre-activation is pushed below -margin, where it is on, above +margin."""
    off = (source > -margin) & (target <= 0)
    on = (source <= margin) & (target > 0)
    return ((source + margin) ** 2 * off + (source - margin) ** 2 * on).sum()


def ab_losses(feats_student: list, feats_teacher: list, margin: float = 1.0) -> list:
    """Per-layer losses, layer i of n weighted 2^(i-n+1), divided by the batch size, times 3/1000
    (RepDistiller distiller_zoo/AB.py)."""
    n, batch = len(feats_student), feats_student[0].shape[0]
    return [2.0 ** (i - n + 1) * alternative_l2(s.float(), t.float(), margin) / batch / 1000 * 3
            for i, (s, t) in enumerate(zip(feats_student, feats_teacher))]


class ConvReg(nn.Module):
    """Regressor from a student map to a teacher map's shape (conv, then BN; no ReLU for AB):
    stride-2 conv when the student map is twice as large, a transposed conv when half, else a
    valid conv whose kernel absorbs the size difference (RepDistiller models/util.py ConvReg)."""

    def __init__(self, s_shape, t_shape):
        super().__init__()
        (s_c, s_h, s_w), (t_c, t_h, t_w) = s_shape, t_shape
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(f"no regressor from a {s_h}x{s_w} map to a {t_h}x{t_w} map")
        self.bn = nn.BatchNorm2d(t_c)

    def forward(self, x):
        return self.bn(self.conv(x))
