import torch.nn.functional as F

from kdbench.distiller import Distiller

from .loss import pkt_loss


class PKT(Distiller):
    """CE + pkt_weight * PKT loss on the pooled penultimate vectors ``feats[-1]``
    (RepDistiller ``--distill pkt -a 0 -b 30000``); no embedding, the two dimensions may differ."""

    def __init__(self, student, teacher, ce_weight: float = 1.0, pkt_weight: float = 30000.0):
        if teacher is None:
            raise ValueError("PKT needs a teacher")
        super().__init__(student, teacher)
        self.ce_weight, self.pkt_weight = ce_weight, pkt_weight

    def forward(self, images, labels, ctx):
        out_s = self.student.forward_features(images)
        out_t = self.teacher_features(images)
        return out_s.logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(out_s.logits, labels),
            "loss_pkt": self.pkt_weight * pkt_loss(out_s.feats[-1], out_t.feats[-1]),
        }
