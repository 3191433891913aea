"""Huang & Wang 2017, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer"
(arXiv 1707.01219), Eq. (4)-(6) with the polynomial kernel k(x, y) = (x.y + c)^d, d = 2, c = 0, as run
by the CRD benchmark (HobbitLong/RepDistiller @b84f547, ``distiller_zoo/NST.py``; mdistiller's
``mdistiller/distillers/NST.py`` computes the same).

Per stage: the larger of the two feature maps is average-pooled to the other's spatial size
(``adaptive_avg_pool2d`` to (H, H) of the smaller map); each channel's flattened spatial map (the
"neuron selectivity" pattern over the HW positions) is L2-normalised; then the squared MMD between
the set of student channels and the set of teacher channels,

    MMD^2 = mean_{i,i'} k(t_i, t_i') + mean_{j,j'} k(s_j, s_j') - 2 mean_{i,j} k(s_j, t_i),

each mean taken over the batch and over all channel pairs (so student and teacher may have different
channel counts). The teacher-teacher term is a detached constant (the official ``full_loss=True``
path keeps it in the value). Computed in float32 with autocast disabled.

The official ``poly_kernel`` materialises a (B, C_a, C_b, HW) broadcast product before summing over
HW; here the same kernel matrix is one batched matrix product (B, C_a, HW) x (B, HW, C_b), squared:
the same numbers up to float summation order, without the memory (B x C_t x C_s x HW floats).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from kdbench.connectors import match_spatial


def poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """k(a_i, b_j) = (a_i . b_j)^2 for every pair of rows, per sample: (B, Ca, D) x (B, Cb, D) -> (B, Ca, Cb)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2)


def nst_layer_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Squared MMD with the degree-2 polynomial kernel between normalised channel maps of one stage."""
    with torch.autocast(f_s.device.type, enabled=False):
        f_s, f_t = match_spatial(f_s.float(), f_t.detach().float())
        s = F.normalize(f_s.reshape(f_s.shape[0], f_s.shape[1], -1), dim=2)
        t = F.normalize(f_t.reshape(f_t.shape[0], f_t.shape[1], -1), dim=2)
        return poly_kernel(t, t).mean().detach() + poly_kernel(s, s).mean() - 2 * poly_kernel(s, t).mean()


def nst_loss(g_s: Sequence[torch.Tensor], g_t: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of :func:`nst_layer_loss` over the paired stages (official: ``sum(NSTLoss()(g_s, g_t))``)."""
    if len(g_s) != len(g_t):
        raise ValueError(f"NST pairs stages one to one; got {len(g_s)} student and {len(g_t)} teacher maps")
    return sum(nst_layer_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t))
