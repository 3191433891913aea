"""Park et al. 2019, "Relational Knowledge Distillation" (arXiv 1904.05068), Eq. (4)-(7), as run by the
CRD benchmark (HobbitLong/RepDistiller @b84f547, ``distiller_zoo/RKD.py``; mdistiller's
``mdistiller/distillers/RKD.py`` computes the same).

Both relations are computed on the flattened penultimate embeddings of a batch:

* distance-wise: the Euclidean distance matrix of the batch, divided by the mean of its positive
  entries (the paper's mu), student vs. teacher compared with the Huber / smooth-L1 loss (delta 1),
  averaged over all B*B entries (the zero diagonal included);
* angle-wise: for every anchor a, the cosines <e_ab, e_ac> of the unit vectors e_ab = (x_b - x_a)/|.|,
  a B*B*B tensor whose entries with b == a or c == a are 0 (zero vectors stay zero after the
  normalisation), compared with smooth-L1, averaged over all B^3 entries.

The teacher side never receives a gradient. Needs a batch of at least 2 (the mean distance is
otherwise undefined). Computed in float32 with autocast disabled: the distance matrix comes from
|a|^2 + |b|^2 - 2ab, which would cancel catastrophically in bf16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-12  # RepDistiller RKDLoss.pdist(eps=1e-12): the squared distances are clamped to it


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).float()


def pdist(e: torch.Tensor, squared: bool = False, eps: float = EPS) -> torch.Tensor:
    """Pairwise Euclidean distances of the rows of ``e`` (B, D), as the official ``pdist``.

    Squared distances are formed as ``|a|^2 + |b|^2 - 2 a.b`` and clamped below at ``eps`` (so an
    off-diagonal distance is at least sqrt(eps) = 1e-6), square-rooted unless ``squared``, and the
    diagonal is then set to exactly 0 (no gradient flows through it).
    """
    sq = e.pow(2).sum(dim=1)
    res = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps)
    if not squared:
        res = res.sqrt()
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return res.masked_fill(eye, 0.0)


def _normalised_distances(e: torch.Tensor, squared: bool, eps: float) -> torch.Tensor:
    d = pdist(e, squared, eps)
    return d / d[d > 0].mean()


def rkd_distance_loss(f_s: torch.Tensor, f_t: torch.Tensor, squared: bool = False, eps: float = EPS) -> torch.Tensor:
    """smooth-L1 between the mean-normalised distance matrices (mean over all B*B entries)."""
    with torch.autocast(f_s.device.type, enabled=False):
        s, t = _fp32(f_s), _fp32(f_t.detach())
        with torch.no_grad():
            t_d = _normalised_distances(t, squared, eps)
        return F.smooth_l1_loss(_normalised_distances(s, squared, eps), t_d)


def _angles(e: torch.Tensor) -> torch.Tensor:
    """angles[a, b, c] = <unit(e_b - e_a), unit(e_c - e_a)>, flattened (B^3,)."""
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # diff[a, b] = e[b] - e[a]
    unit = F.normalize(diff, p=2, dim=2)  # zero vectors (b == a) stay zero
    return torch.bmm(unit, unit.transpose(1, 2)).reshape(-1)


def rkd_angle_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """smooth-L1 between the anchor-wise cosine tensors (mean over all B^3 entries)."""
    with torch.autocast(f_s.device.type, enabled=False):
        s, t = _fp32(f_s), _fp32(f_t.detach())
        with torch.no_grad():
            t_a = _angles(t)
        return F.smooth_l1_loss(_angles(s), t_a)


def rkd_loss(f_s: torch.Tensor, f_t: torch.Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0,
             squared: bool = False, eps: float = EPS) -> torch.Tensor:
    """``distance_weight * L_dist + angle_weight * L_angle`` (RepDistiller ``RKDLoss(w_d=25, w_a=50)``)."""
    return (distance_weight * rkd_distance_loss(f_s, f_t, squared, eps)
            + angle_weight * rkd_angle_loss(f_s, f_t))
