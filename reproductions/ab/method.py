import torch
import torch.nn.functional as F
from torch import nn

from kdbench.distiller import Distiller

from .loss import ConvReg, ab_losses


class AB(Distiller):
    """Stage ``init``: the connectors and the student's feature modules learn the teacher's
    activation boundaries on the pre-activation features preact_feats[1:-1] (unweighted sum of the
    layer losses). Stage ``main``: cross-entropy only (RepDistiller sets the AB term to 0)."""

    def __init__(self, student, teacher, ce_weight: float = 1.0, margin: float = 1.0):
        super().__init__(student, teacher)
        self.ce_weight, self.margin = ce_weight, margin
        s_shapes, t_shapes = _shapes(student), _shapes(teacher)
        self.connector = nn.ModuleList(
            nn.Identity() if s == t else ConvReg(s, t) for s, t in zip(s_shapes, t_shapes))

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


@torch.no_grad()
def _shapes(model) -> list[tuple[int, int, int]]:
    """(C, H, W) of preact_feats[1:-1] at 32x32, from a dummy pass in eval mode (as the official code)."""
    was_training = model.training
    model.eval()
    out = model.forward_features(torch.zeros(2, 3, 32, 32, device=next(model.parameters()).device))
    model.train(was_training)
    return [tuple(f.shape[1:]) for f in out.preact_feats[1:-1]]
