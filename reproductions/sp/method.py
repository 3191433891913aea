import torch.nn.functional as F

from kdbench.distiller import Distiller

from .loss import sp_loss


class SP(Distiller):
    """CE + sp_weight * similarity-preserving loss on the last feature map ``feats[-2]``
    (RepDistiller ``--distill similarity -a 0 -b 3000``)."""

    def __init__(self, student, teacher, ce_weight: float = 1.0, sp_weight: float = 3000.0):
        if teacher is None:
            raise ValueError("SP needs a teacher")
        super().__init__(student, teacher)
        self.ce_weight, self.sp_weight = ce_weight, sp_weight

    def forward(self, images, labels, ctx):
        out_s = self.student.forward_features(images)
        out_t = self.teacher_features(images)
        return out_s.logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(out_s.logits, labels),
            "loss_sp": self.sp_weight * sp_loss(out_s.feats[-2], out_t.feats[-2]),
        }
