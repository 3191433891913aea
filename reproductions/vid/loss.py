"""Ahn et al. 2019, "Variational Information Distillation for Knowledge Transfer" (arXiv 1904.05835),
Eq. (2)-(5), as run by the CRD benchmark (HobbitLong/RepDistiller @b84f547, ``distiller_zoo/VID.py``,
"code from author": ssahn0215/variational-information-distillation).

VID maximises a variational lower bound of the mutual information between teacher and student
features by minimising the negative log-likelihood of the teacher feature t under a Gaussian whose
mean mu(s) is regressed from the student feature s and whose variance is one learned value per
teacher channel (homoscedastic over the positions and samples):

    sigma_c^2 = softplus(alpha_c) + eps
    L_vid     = mean_{b,c,h,w} 0.5 * ( (mu_{b,c,h,w} - t_{b,c,h,w})^2 / sigma_c^2 + log sigma_c^2 )

The mean is over every element (batch, channel, position); the Gaussian's constant 0.5*log(2*pi) is
dropped, as in the official code. Before regression the larger of the two maps is average-pooled to
the smaller's (H, H) (``adaptive_avg_pool2d``; the student map is pooled before the regressor). alpha_c
starts at softplus^{-1}(init_pred_var - eps) = log(exp(init_pred_var - eps) - 1), so sigma_c^2 starts at
``init_pred_var`` (5.0). The likelihood is computed in float32 with autocast disabled.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdbench.connectors import match_spatial

INIT_PRED_VAR = 5.0
EPS = 1e-5  # RepDistiller VIDLoss(eps=1e-5), mdistiller CFG.VID.EPS


def init_log_scale(init_pred_var: float = INIT_PRED_VAR, eps: float = EPS) -> float:
    """alpha such that softplus(alpha) + eps == init_pred_var (official ``np.log(np.exp(v - eps) - 1.0)``)."""
    return math.log(math.expm1(init_pred_var - eps))


def predicted_variance(log_scale: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """sigma^2 = softplus(alpha) + eps, per channel (official ``torch.log(1.0 + torch.exp(alpha)) + eps``;
    ``F.softplus`` is the same function, without overflow for large alpha)."""
    return F.softplus(log_scale.float()) + eps


def vid_nll(pred_mean: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """mean over all elements of 0.5 * ((mu - t)^2 / sigma_c^2 + log sigma_c^2); ``log_scale`` is (C,)."""
    with torch.autocast(pred_mean.device.type, enabled=False):
        var = predicted_variance(log_scale, eps).view(1, -1, 1, 1)
        diff = pred_mean.float() - target.detach().float()
        return (0.5 * (diff.pow(2) / var + torch.log(var))).mean()


def vid_loss(f_s: torch.Tensor, f_t: torch.Tensor, regressor, log_scale: torch.Tensor,
             eps: float = EPS) -> torch.Tensor:
    """One stage: pool to a common size, regress the teacher map from the student map, Gaussian NLL."""
    f_s, f_t = match_spatial(f_s, f_t)
    return vid_nll(regressor(f_s), f_t, log_scale, eps)
