"""Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (arXiv 1612.03928): the
activation-based attention transfer loss as computed by the CRD benchmark code.

RepDistiller ``distiller_zoo/AT.py`` (identical to the authors' ``utils.at``/``utils.at_loss`` in
szagoruyko/attention-transfer, plus a spatial alignment for heterogeneous pairs):

* attention map of a ``(B, C, H, W)`` feature: the channel MEAN of ``|f|^p`` (``f.pow(p).mean(1)``;
  the paper writes a sum, which the L2 normalisation makes identical), flattened to ``(B, H*W)`` and
  L2-normalised per sample (``F.normalize``: divide by ``max(norm, 1e-12)``);
* per layer: squared difference of the two normalised maps, MEAN over batch and positions
  (``.pow(2).mean()``, not the paper's p-norm of the difference, not halved);
* if the spatial sizes differ, the larger FEATURE MAP (not the attention map) is average-pooled
  to the smaller side with ``adaptive_avg_pool2d(f, (h, h))`` (the height is used for both sides);
* layers are paired with ``zip`` (extra layers of the longer list are ignored) and SUMMED.
"""
import torch
import torch.nn.functional as F

from kdbench.connectors import match_spatial
from kdbench.losses import float32 as _fp32


def attention_map(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``(B, C, H, W)`` -> L2-normalised ``(B, H*W)`` map of the channel mean of ``feat ** p``."""
    am = _fp32(feat).pow(p).mean(1).reshape(feat.shape[0], -1)
    return F.normalize(am, p=2.0, dim=1, eps=1e-12)


def at_layer_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """One layer: mean squared difference of the attention maps, after spatial alignment."""
    with torch.autocast(f_s.device.type, enabled=False):
        f_s, f_t = _fp32(f_s), _fp32(f_t)
        f_s, f_t = match_spatial(f_s, f_t)
        return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


def at_loss(feats_student, feats_teacher, p: float = 2.0) -> torch.Tensor:
    """Sum over zipped layer pairs of :func:`at_layer_loss`."""
    terms = [at_layer_loss(f_s, f_t, p) for f_s, f_t in zip(feats_student, feats_teacher)]
    if not terms:
        raise ValueError("at_loss needs at least one pair of feature maps")
    return sum(terms[1:], terms[0])  # left-to-right, as the official sum(loss_group)
