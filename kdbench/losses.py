"""Loss building blocks shared by the harness (the ``+kd`` combination)."""
import torch
import torch.nn.functional as F


def kd_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (arXiv 1503.02531): KL(teacher || student) of the temperature-softened
    distributions, summed over classes, averaged over the batch, times T^2 (so gradients keep their
    magnitude as T changes).

    The CRD/DKD code computes the same quantity (RepDistiller: ``KLDivLoss(reduction='sum') / B * T^2``;
    mdistiller: per-sample sum, batch mean, times T^2). Computed in float32 even under autocast.
    """
    t = float(temperature)
    log_p_s = F.log_softmax(logits_student.float() / t, dim=1)
    log_p_t = F.log_softmax(logits_teacher.float() / t, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return kl.mean() * t * t


def float32(x: torch.Tensor) -> torch.Tensor:
    """Half/bfloat16 (autocast) activations upcast to float32; float32/float64 kept as they are.
    Feature losses (Gram matrices, kernels, normalisations) run on these with autocast disabled."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
