import torch.nn.functional as F
from torch import nn

from kdbench.connectors import ConvReg, place_like, probe_features
from kdbench.distiller import Distiller

from .loss import ab_losses


class AB(Distiller):
    """Stage ``init``: the connectors and the student's feature modules learn the teacher's
    activation boundaries on the pre-activation features preact_feats[1:-1] (unweighted sum of the
    layer losses). Stage ``main``: cross-entropy only (RepDistiller sets the AB term to 0)."""

    def __init__(self, student, teacher, ce_weight: float = 1.0, margin: float = 1.0):
        super().__init__(student, teacher)
        self.ce_weight, self.margin = ce_weight, margin
        s_shapes = [tuple(f.shape[1:]) for f in probe_features(student).preact_feats[1:-1]]
        t_shapes = [tuple(f.shape[1:]) for f in probe_features(teacher).preact_feats[1:-1]]
        self.connector = place_like(nn.ModuleList(  # RepDistiller Connector: ConvReg without ReLU
            nn.Identity() if s == t else ConvReg(s, t, use_relu=False) for s, t in zip(s_shapes, t_shapes)), student)

    def trainable_parameters(self, stage: str = "main"):
        if stage == "init":
            return [*self.connector.parameters(), *self.student.get_feat_modules().parameters()]
        return super().trainable_parameters(stage)

    def _student_preact(self, images):
        s = self.student.forward_features(images)
        replay = getattr(self.student, "replay_official_preact_bn_update", None)
        if replay is not None:  # official WRN preact forward re-runs three BNs (running stats move twice)
            replay(s.feats)
        return s

    def forward(self, images, labels, ctx):
        s = self._student_preact(images)  # the official loop runs the student with preact=True in both stages
        if ctx.stage == "init":
            t = self.teacher_features(images)
            g_s = [c(f) for c, f in zip(self.connector, s.preact_feats[1:-1])]
            return s.logits, {"loss_ab": sum(ab_losses(g_s, t.preact_feats[1:-1], self.margin))}
        return s.logits, {"loss_ce": self.ce_weight * F.cross_entropy(s.logits, labels)}
