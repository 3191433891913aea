"""Yim, Joo, Bae, Kim, CVPR 2017, "A Gift from Knowledge Distillation: Fast Optimization, Network
Minimization and Transfer Learning" (FSP). No arXiv version."""
import torch

from kdbench.connectors import match_spatial


def fsp_matrix(bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """The flow between two feature maps: G[b, i, j] = mean over positions of bottom_i * top_j.
    The larger map is first average-pooled to the smaller size (official RepDistiller behaviour)."""
    bottom, top = match_spatial(bottom, top)
    return torch.einsum("bihw,bjhw->bij", bottom, top) / (bottom.shape[2] * bottom.shape[3])


def fsp_losses(feats_student: list, feats_teacher: list) -> list:
    """Mean squared difference of the FSP matrices of consecutive feature pairs, one per pair."""
    out = []
    for i in range(len(feats_student) - 1):
        gs = fsp_matrix(feats_student[i].float(), feats_student[i + 1].float())
        gt = fsp_matrix(feats_teacher[i].float(), feats_teacher[i + 1].float())
        out.append((gs - gt).pow(2).mean())
    return out
