"""Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation" (arXiv 1907.09682), Eq. (2)-(4).

For a batch of ``b`` activation maps, each flattened to a vector: the ``b x b`` Gram matrix
``G = A A^T``, each ROW L2-normalised (``F.normalize`` along dim 1, eps 1e-12); the loss is the
squared Frobenius norm of ``G_t - G_s`` divided by ``b^2``. This is RepDistiller
``distiller_zoo/SP.py`` ("verified by original author"), which returns a 1-element tensor; we return
the same value as a 0-d scalar.
"""
import torch
import torch.nn.functional as F

from kdbench.losses import float32 as _fp32


def similarity_matrix(feat: torch.Tensor) -> torch.Tensor:
    """Row-normalised ``b x b`` Gram matrix of the flattened per-sample activations."""
    a = _fp32(feat).reshape(feat.shape[0], -1)  # reshape, not view: works for channels_last too
    return F.normalize(a @ a.t(), p=2.0, dim=1, eps=1e-12)


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """``||G_t - G_s||_F^2 / b^2`` in float32 even under autocast."""
    b = f_s.shape[0]
    if f_t.shape[0] != b:
        raise ValueError(f"batch sizes differ: {b} vs {f_t.shape[0]}")
    with torch.autocast(f_s.device.type, enabled=False):
        diff = similarity_matrix(f_t) - similarity_matrix(f_s)
        return (diff * diff).sum() / (b * b)
