import torch.nn.functional as F

from kdbench.distiller import Distiller

from .loss import dkd_loss


class DKD(Distiller):
    """CE + min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD), epochs counted from 1."""

    def __init__(self, student, teacher, ce_weight: float = 1.0, alpha: float = 1.0, beta: float = 8.0,
                 temperature: float = 4.0, warmup: int = 20):
        super().__init__(student, teacher)
        self.ce_weight, self.alpha, self.beta = ce_weight, alpha, beta
        self.temperature, self.warmup = temperature, warmup

    def forward(self, images, labels, ctx):
        logits = self.student(images)
        teacher_logits = self.teacher_logits(images)
        ramp = min(ctx.epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": ramp * dkd_loss(logits, teacher_logits, labels, self.alpha, self.beta, self.temperature),
        }
