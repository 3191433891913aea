import torch.nn.functional as F

from kdbench.distiller import Distiller

from .loss import at_loss


class AT(Distiller):
    """CE + at_weight * sum over stages of the attention-transfer loss (RepDistiller
    ``--distill attention -a 0 -b 1000``: p = 2 on ``feats[1:-1]``, every stage output)."""

    def __init__(self, student, teacher, ce_weight: float = 1.0, at_weight: float = 1000.0, p: float = 2.0):
        if teacher is None:
            raise ValueError("AT needs a teacher")
        super().__init__(student, teacher)
        self.ce_weight, self.at_weight, self.p = ce_weight, at_weight, p

    def forward(self, images, labels, ctx):
        out_s = self.student.forward_features(images)
        out_t = self.teacher_features(images)
        return out_s.logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(out_s.logits, labels),
            "loss_at": self.at_weight * at_loss(out_s.feats[1:-1], out_t.feats[1:-1], self.p),
        }
