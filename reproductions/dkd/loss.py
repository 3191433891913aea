"""Zhao et al. 2022, "Decoupled Knowledge Distillation" (arXiv 2203.08679), Eq. (7):
KD = TCKD + (1 - p_t^T) NCKD, decoupled into alpha * TCKD + beta * NCKD."""
import torch
import torch.nn.functional as F

# The official code removes the target class from the non-target distribution by subtracting
# 1000 from its (temperature-scaled) logit before the softmax rather than masking it to -inf;
# the result is the renormalised non-target distribution up to exp(-1000) and stays finite.
_MASK = 1000.0


def _kl(p_teacher: torch.Tensor, log_p_student: torch.Tensor) -> torch.Tensor:
    """sum_i p_t,i (log p_t,i - log p_s,i), treating 0 * log 0 as 0; per sample."""
    return torch.xlogy(p_teacher, p_teacher).sum(1) - (p_teacher * log_p_student).sum(1)


def tckd_nckd(logits_student: torch.Tensor, logits_teacher: torch.Tensor, target: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each summed over its classes, batch-averaged and multiplied by T^2."""
    t = float(temperature)
    s, te = logits_student.float() / t, logits_teacher.float() / t
    gt = F.one_hot(target, s.shape[1]).bool()
    p_s, p_t = s.softmax(1), te.softmax(1)
    # binary (target, all non-target) distributions b = [p_gt, sum of the others]
    b_s = torch.stack([p_s.masked_fill(~gt, 0).sum(1), p_s.masked_fill(gt, 0).sum(1)], dim=1)
    b_t = torch.stack([p_t.masked_fill(~gt, 0).sum(1), p_t.masked_fill(gt, 0).sum(1)], dim=1)
    tckd = _kl(b_t, torch.log(b_s)).mean() * t * t
    # distributions among the non-target classes only
    pn_t = (te - _MASK * gt).softmax(1)
    log_pn_s = (s - _MASK * gt).log_softmax(1)
    nckd = _kl(pn_t, log_pn_s).mean() * t * t
    return tckd, nckd


def dkd_loss(logits_student, logits_teacher, target, alpha: float, beta: float, temperature: float):
    """alpha * TCKD + beta * NCKD."""
    tckd, nckd = tckd_nckd(logits_student, logits_teacher, target, temperature)
    return alpha * tckd + beta * nckd
