"""Heo, Lee, Yun, Choi, AAAI 2019, "Knowledge Transfer via Distillation of Activation Boundaries
Formed by Hidden Neurons" (AB, arXiv 1811.03233), as the CRD benchmark (RepDistiller) ran it."""
import torch


def alternative_l2(source: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Summed hinge-squared loss on the activation boundary: where the teacher neuron is off
    (target <= 0) the student pre-activation is pushed below -margin, where it is on, above +margin."""
    off = (source > -margin) & (target <= 0)
    on = (source <= margin) & (target > 0)
    return ((source + margin) ** 2 * off + (source - margin) ** 2 * on).sum()


def ab_losses(feats_student: list, feats_teacher: list, margin: float = 1.0) -> list:
    """Per-layer losses, layer i of n weighted 2^(i-n+1), divided by the batch size, times 3/1000
    (RepDistiller distiller_zoo/AB.py)."""
    n, batch = len(feats_student), feats_student[0].shape[0]
    return [2.0 ** (i - n + 1) * alternative_l2(s.float(), t.float(), margin) / batch / 1000 * 3
            for i, (s, t) in enumerate(zip(feats_student, feats_teacher))]
