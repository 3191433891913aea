import torch.nn.functional as F

from kdbench.distiller import Distiller

from .loss import EPS, rkd_angle_loss, rkd_distance_loss


class RKD(Distiller):
    """CE + rkd_weight * (distance_weight * L_dist + angle_weight * L_angle) on the pooled features.

    As RepDistiller ``train_student.py --distill rkd -a 0 -b 1`` (``RKDLoss()`` with w_d = 25, w_a = 50)
    on ``feat[-1]``, the flattened global-average-pooled vector feeding the classifier, of the student
    and of the frozen teacher. No extra learnable parts. The two relational terms are returned as
    separate, already weighted entries (their sum is the official ``-b 1 * RKDLoss``).
    """

    def __init__(self, student, teacher, ce_weight: float = 1.0, rkd_weight: float = 1.0,
                 distance_weight: float = 25.0, angle_weight: float = 50.0, squared: bool = False,
                 eps: float = EPS):
        super().__init__(student, teacher)
        if teacher is None:
            raise ValueError("RKD needs a teacher")
        self.ce_weight, self.rkd_weight = ce_weight, rkd_weight
        self.distance_weight, self.angle_weight = distance_weight, angle_weight
        self.squared, self.eps = squared, eps

    def forward(self, images, labels, ctx):
        if images.shape[0] < 2:
            raise ValueError("RKD needs a batch of at least 2 samples (relations between samples)")
        out_s = self.student.forward_features(images)
        f_t = self.teacher_features(images).feats[-1]
        f_s = out_s.feats[-1]
        return out_s.logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(out_s.logits, labels),
            "loss_rkd_distance": self.rkd_weight * self.distance_weight
            * rkd_distance_loss(f_s, f_t, self.squared, self.eps),
            "loss_rkd_angle": self.rkd_weight * self.angle_weight * rkd_angle_loss(f_s, f_t),
        }
