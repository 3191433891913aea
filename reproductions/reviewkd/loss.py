"""Chen et al. 2021, "Distilling Knowledge via Knowledge Review" (arXiv 2104.09044), the
hierarchical context loss (HCL) as the official CIFAR-100 code computes it
(dvlab-research/ReviewKD @cede6ea, ``CIFAR-100/model/reviewkd.py``, ``hcl``).

For each level, with the student's fused map ``s`` and the teacher's map ``t`` (same shape,
``N x C x H x W``)::

    l = mse(s, t) + sum_{k in (4, 2, 1), k < H} w_k * mse(pool_k(s), pool_k(t))
    l = l / (1 + sum w_k)          with w_4, w_2, w_1 = 1/2, 1/4, 1/8 in the order they are used

``mse`` is the element mean, ``pool_k`` an adaptive average pool to ``k x k``. A pyramid level ``k``
is skipped when ``k >= H`` (so a 4 x 4 map uses the 2 x 2 and 1 x 1 levels with weights 1/2 and 1/4:
the weights halve for each level *used*, not per fixed size). The loss is the sum over levels (not the
mean). It is computed in float32 with autocast disabled.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PYRAMID = (4, 2, 1)


def hcl_level(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """The HCL of one level (see the module docstring)."""
    with torch.autocast(f_s.device.type, enabled=False):
        f_s, f_t = f_s.float(), f_t.detach().float()
        loss = F.mse_loss(f_s, f_t, reduction="mean")
        weight, total = 1.0, 1.0
        for size in PYRAMID:
            if size >= f_s.shape[2]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, size), F.adaptive_avg_pool2d(f_t, size))
            total += weight
        return loss / total


def hcl(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
    """Sum of :func:`hcl_level` over the paired levels."""
    if len(student_feats) != len(teacher_feats):
        raise ValueError(f"{len(student_feats)} student levels for {len(teacher_feats)} teacher levels")
    return sum(hcl_level(s, t) for s, t in zip(student_feats, teacher_feats))
