"""Peng et al. 2019, "Correlation Congruence for Knowledge Distillation" (arXiv 1904.01802), as run by the
CRD benchmark (HobbitLong/RepDistiller @b84f547, ``distiller_zoo/CC.py``, class ``Correlation``).

What RepDistiller ran is NOT the paper's kernel formulation (the Gram matrix of a Gaussian RBF kernel
approximated by a P-order Taylor series, gamma and P as hyperparameters, compared with an L2 loss).
Its ``Correlation`` loss, "restructured" from code the CC authors sent to Tian (docstring of CC.py), is

    delta_i = |e_s,i - e_t,i|                          (element-wise, per sample i of the batch)
    L_cc    = 1/(B-1) * sum_{i=0}^{B-2} <delta_i, delta_{i+1}>

i.e. for each pair of CONSECUTIVE samples in the batch, the dot product of their absolute
student-teacher embedding differences, averaged over the B-1 pairs. There is no gamma, no P_order and
no kernel. (RepDistiller keeps, commented out, Tian's own earlier reimplementation: a normalised
Gram-matrix L2 loss; it was not used for the table.)

The embeddings e_s, e_t are the method's learnable linear projections (``method.py``); the loss itself
has no parameters. Needs a batch of at least 2. Computed in float32 with autocast disabled.
"""
from __future__ import annotations

import torch


def cc_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    """mean over consecutive pairs (i, i+1) of <|e_s,i - e_t,i|, |e_s,i+1 - e_t,i+1|>."""
    with torch.autocast(e_s.device.type, enabled=False):
        delta = (e_s.reshape(e_s.shape[0], -1).float() - e_t.reshape(e_t.shape[0], -1).float()).abs()
        return (delta[:-1] * delta[1:]).sum(dim=1).mean()
