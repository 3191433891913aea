import torch.nn.functional as F

from kdbench.connectors import ConvReg, place_like, probe_features
from kdbench.distiller import Distiller

from .loss import hint_loss


class FitNet(Distiller):
    """CE + hint_weight * MSE(regressor(student feats[hint_layer]), teacher feats[hint_layer]).

    One stage, as RepDistiller runs the CRD benchmark (``--distill hint -a 0 -b 100``,
    ``--hint_layer 2``): the regressor is trained jointly with the student from the first epoch
    (the paper's separate hint-pretraining stage is not used).
    """

    def __init__(self, student, teacher, ce_weight: float = 1.0, hint_weight: float = 100.0, hint_layer: int = 2):
        if teacher is None:
            raise ValueError("FitNet needs a teacher")
        super().__init__(student, teacher)
        self.ce_weight, self.hint_weight, self.hint_layer = ce_weight, hint_weight, hint_layer
        shapes_s = [f.shape for f in probe_features(student).feats]
        shapes_t = [f.shape for f in probe_features(teacher).feats]
        if not (0 <= hint_layer < len(shapes_s) - 1 and hint_layer < len(shapes_t) - 1):
            raise ValueError(f"hint_layer {hint_layer} must index a 4-D feature map of both models")
        # RepDistiller's ConvReg with ReLU; same device and memory format as the student
        self.conv_reg = place_like(ConvReg(shapes_s[hint_layer], shapes_t[hint_layer], use_relu=True), student)

    def forward(self, images, labels, ctx):
        out_s = self.student.forward_features(images)
        out_t = self.teacher_features(images)
        regressed = self.conv_reg(out_s.feats[self.hint_layer])
        return out_s.logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(out_s.logits, labels),
            "loss_hint": self.hint_weight * hint_loss(regressed, out_t.feats[self.hint_layer]),
        }
