import torch.nn.functional as F

from kdbench.distiller import Distiller

from .loss import kd_loss


class KD(Distiller):
    """Cross-entropy on labels plus Hinton's soft-target loss on the frozen teacher's logits."""

    def __init__(self, student, teacher, temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9):
        super().__init__(student, teacher)
        self.temperature, self.ce_weight, self.kd_weight = temperature, ce_weight, kd_weight

    def forward(self, images, labels, ctx):
        logits = self.student(images)
        teacher_logits = self.teacher_logits(images)
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": self.kd_weight * kd_loss(logits, teacher_logits, self.temperature),
        }
