import torch.nn.functional as F

from kdbench.distiller import Distiller

from .loss import dist_loss


class DIST(Distiller):
    """ce_weight * CE + kd_weight * DIST(beta, gamma, tau); the official CIFAR-100 run is
    CE 1 + 2 * DIST(beta=1, gamma=1, tau=4), i.e. beta = gamma = 2 relative to CE."""

    def __init__(self, student, teacher, ce_weight: float = 1.0, kd_weight: float = 2.0, beta: float = 1.0,
                 gamma: float = 1.0, tau: float = 4.0):
        super().__init__(student, teacher)
        self.ce_weight, self.kd_weight = ce_weight, kd_weight
        self.beta, self.gamma, self.tau = beta, gamma, tau

    def forward(self, images, labels, ctx):
        logits = self.student(images)
        teacher_logits = self.teacher_logits(images)
        return logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(logits, labels),
            "loss_kd": self.kd_weight * dist_loss(logits, teacher_logits, self.beta, self.gamma, self.tau),
        }
