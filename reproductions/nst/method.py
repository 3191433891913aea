import torch.nn.functional as F

from kdbench.distiller import Distiller

from .loss import nst_loss


class NST(Distiller):
    """CE + nst_weight * sum over stages of MMD^2 (degree-2 polynomial kernel) on ``feats[1:-1]``.

    As RepDistiller ``train_student.py --distill nst -a 0 -b 50``: ``NSTLoss()`` on every stage output
    (``feat[1:-1]``, post-ReLU, not pre-activation) of student and frozen teacher, stage i with stage i.
    No extra learnable parts.
    """

    def __init__(self, student, teacher, ce_weight: float = 1.0, nst_weight: float = 50.0):
        super().__init__(student, teacher)
        if teacher is None:
            raise ValueError("NST needs a teacher")
        self.ce_weight, self.nst_weight = ce_weight, nst_weight
        try:  # fail at construction, not at the first step, if the stages cannot be paired
            n_s, n_t = len(student.feature_channels()) - 2, len(teacher.feature_channels()) - 2
        except (AttributeError, NotImplementedError):
            n_s = n_t = None
        if n_s != n_t:
            raise ValueError(f"NST pairs stages one to one; the student has {n_s} feature maps (feats[1:-1]), "
                             f"the teacher {n_t}")

    def forward(self, images, labels, ctx):
        out_s = self.student.forward_features(images)
        g_t = self.teacher_features(images).feats[1:-1]
        return out_s.logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(out_s.logits, labels),
            "loss_nst": self.nst_weight * nst_loss(out_s.feats[1:-1], g_t),
        }
