import torch.nn.functional as F

from kdbench.distiller import Distiller

from .loss import fsp_losses


class FSP(Distiller):
    """Two stages, as RepDistiller ran it: ``init`` trains the student's feature modules
    (``get_feat_modules``) on the unweighted sum of the FSP losses over feats[:-1]; ``main`` is
    cross-entropy only (RepDistiller sets the distillation term to 0 after the init stage)."""

    def __init__(self, student, teacher, ce_weight: float = 1.0):
        super().__init__(student, teacher)
        self.ce_weight = ce_weight
        s, t = student.feature_channels()[:-1], teacher.feature_channels()[:-1]
        if s != t:
            raise ValueError(f"FSP needs equal channel counts of student and teacher features, got {s} and {t}")

    def trainable_parameters(self, stage: str = "main"):
        if stage == "init":
            return list(self.student.get_feat_modules().parameters())
        return super().trainable_parameters(stage)

    def forward(self, images, labels, ctx):
        if ctx.stage == "init":
            s = self.student.forward_features(images)
            t = self.teacher_features(images)
            return s.logits, {"loss_fsp": sum(fsp_losses(s.feats[:-1], t.feats[:-1]))}
        logits = self.student(images)
        return logits, {"loss_ce": self.ce_weight * F.cross_entropy(logits, labels)}
