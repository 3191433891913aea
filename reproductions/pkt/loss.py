"""Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge Transfer"
(arXiv 1803.10837): the cosine-kernel PKT loss.

As in the authors' ``nn/pkt.py`` (passalis/probabilistic_kt) and RepDistiller
``distiller_zoo/PKT.py`` (the same function):

* each vector is divided by ``sqrt(sum x^2) + eps`` (eps = 1e-7 ADDED to the norm, not a clamp),
  and NaN entries of the result are set to 0;
* kernel: cosine similarity rescaled to [0, 1], ``(x_i . x_j + 1) / 2``, including i = j;
* each ROW is divided by its sum (conditional probabilities p_{j|i});
* loss: ``mean over all b x b entries of p_t * log((p_t + eps) / (p_s + eps))`` (``torch.mean``,
  so KL summed per row and divided by b^2, with eps = 1e-7 inside the log ratio).
"""
import torch

from kdbench.losses import float32 as _fp32


def _unit_rows(x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
    return x.masked_fill(torch.isnan(x), 0.0)


def cosine_probabilities(feat: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``b x b`` row-stochastic matrix of rescaled cosine similarities."""
    x = _unit_rows(_fp32(feat).reshape(feat.shape[0], -1), eps)
    sim = (x @ x.t() + 1.0) / 2.0
    return sim / sim.sum(dim=1, keepdim=True)


def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """PKT loss between student and teacher vectors ``(b, d_s)``, ``(b, d_t)``; float32 under autocast."""
    if f_s.shape[0] != f_t.shape[0]:
        raise ValueError(f"batch sizes differ: {f_s.shape[0]} vs {f_t.shape[0]}")
    with torch.autocast(f_s.device.type, enabled=False):
        p_s, p_t = cosine_probabilities(f_s, eps), cosine_probabilities(f_t, eps)
        return torch.mean(p_t * torch.log((p_t + eps) / (p_s + eps)))
