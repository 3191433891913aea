"""Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher" (DIST, arXiv 2205.10536).

DIST replaces KL matching by correlation matching of the temperature-softened predictions:
an inter-class term (per sample, across classes) and an intra-class term (per class, across the
batch), each 1 - Pearson correlation, averaged, and scaled by tau^2.
"""
import torch

_EPS = 1e-8  # official: added to the product of norms in the cosine denominator


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: cosine similarity of the
    row-centred vectors, ``sum(a'b') / (|a'| |b'| + 1e-8)`` as the official code computes it."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + _EPS)


def inter_class_relation(y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """1 - mean over samples of the correlation across classes."""
    return 1.0 - pearson_rows(y_s, y_t).mean()


def intra_class_relation(y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """1 - mean over classes of the correlation across the batch."""
    return inter_class_relation(y_s.t(), y_t.t())


def dist_loss(logits_student, logits_teacher, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0):
    """beta * tau^2 * inter + gamma * tau^2 * intra, on softmax(logits / tau) (in float32)."""
    y_s = (logits_student.float() / tau).softmax(dim=1)
    y_t = (logits_teacher.float() / tau).softmax(dim=1)
    return tau * tau * (beta * inter_class_relation(y_s, y_t) + gamma * intra_class_relation(y_s, y_t))
