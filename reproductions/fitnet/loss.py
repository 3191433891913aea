"""Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (arXiv 1412.6550): the hint loss.

The student's guided layer goes through a learnable regressor (``method.ConvRegressor``) and is
pulled towards the teacher's hint layer by a squared error. As run in the CRD benchmark
(RepDistiller ``distiller_zoo/FitNet.py``: ``nn.MSELoss()``) the error is the MEAN over every element
(batch x channels x height x width), not the paper's 1/2 * squared L2 norm.
"""
import torch
import torch.nn.functional as F

from kdbench.losses import float32 as _fp32


def hint_loss(regressed_student: torch.Tensor, teacher_hint: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements, in float32 even under autocast."""
    if regressed_student.shape != teacher_hint.shape:
        raise ValueError(f"hint shapes differ: regressed student {tuple(regressed_student.shape)} "
                         f"vs teacher {tuple(teacher_hint.shape)}")
    with torch.autocast(regressed_student.device.type, enabled=False):
        return F.mse_loss(_fp32(regressed_student), _fp32(teacher_hint), reduction="mean")
