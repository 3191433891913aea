"""Heo et al. 2019, "A Comprehensive Overhaul of Feature Distillation" (arXiv 1904.01866), as the
official CIFAR-100 code computes it (clovaai/overhaul-distillation @76344a8, ``CIFAR-100/distiller.py``).

* **Margin** (per teacher channel, from the BatchNorm before the ReLU, weight s and bias m): the
  expected value of the teacher's pre-ReLU response given that it is negative, for a Gaussian
  N(m, s^2), i.e. E[x | x < 0]::

      margin = m - |s| * phi(m / |s|) / Phi(-m / |s|)      if Phi(-m / |s|) > 0.001
      margin = -3 |s|                                        otherwise

  (phi, Phi: standard normal density and CDF; the official code uses ``scipy.stats.norm`` on each
  channel's float values, we use the closed form with ``erfc`` in float64 on the whole vector).
* **Partial L2**: with the teacher's pre-ReLU feature t raised to the margin, ``t' = max(t, margin)``,
  the squared difference to the student's (connected) feature s counts only where
  ``s > t'`` or ``t' > 0`` (a student response below a negative teacher response is not penalised);
  summed over every element (no mean).
* **Stages**: of n stage features, stage i (0-based) is divided by ``2 ** (n - i - 1)`` (the last by
  1, the one before by 2, ...); the official training loop then divides the sum by the batch size and
  by 1000 (the method's ``ofd_weight`` = 1e-3).
"""
from __future__ import annotations

import math

import torch


def bn_margin(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-channel margin from a BatchNorm's affine weight and bias (see the module docstring)."""
    s, m = weight.detach().double().abs(), bias.detach().double()
    z = m / s
    cdf_neg = 0.5 * torch.erfc(z / math.sqrt(2.0))  # Phi(-m/s)
    pdf = torch.exp(-z ** 2 / 2) / math.sqrt(2 * math.pi)
    margin = torch.where(cdf_neg > 0.001, m - s * pdf / cdf_neg.clamp_min(1e-300), -3 * s)
    return margin.float()


def partial_l2(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Sum of the masked squared differences; ``margin`` broadcasts over ``target`` (``1 x C x 1 x 1``).
    Computed in float32 with autocast off; no gradient flows into ``target``."""
    with torch.autocast(source.device.type, enabled=False):
        source, target = source.float(), target.detach().float()
        target = torch.maximum(target, margin.to(target.dtype))
        mask = ((source > target) | (target > 0)).to(source.dtype)
        return ((source - target) ** 2 * mask).sum()


def stage_weights(n: int) -> list[float]:
    """``1 / 2 ** (n - i - 1)`` for stage i of n: the deepest stage counts most."""
    return [1.0 / 2 ** (n - i - 1) for i in range(n)]


def ofd_feature_loss(sources: list, targets: list, margins: list) -> torch.Tensor:
    """The official ``loss_distill`` of one batch: the stage-weighted sum of the partial L2 losses
    (``sources`` are the student features after the connectors); not yet divided by the batch."""
    if not len(sources) == len(targets) == len(margins):
        raise ValueError(f"{len(sources)} student features, {len(targets)} teacher features, {len(margins)} margins")
    return sum(w * partial_l2(s, t, m) for w, s, t, m in zip(stage_weights(len(sources)), sources, targets, margins))
