import torch
import torch.nn.functional as F

from kdbench.distiller import Distiller

from .loss import Paraphraser, Translator, factor_transfer_loss


class FT(Distiller):
    """Stage ``init``: the paraphraser learns to reconstruct the teacher's feats[-2] (MSE).
    Stage ``main``: CE + weight * |factor(translator(student feats[-2])) - factor(paraphraser code)|,
    with the paraphraser frozen."""

    def __init__(self, student, teacher, ce_weight: float = 1.0, weight: float = 200.0, k: float = 0.5):
        super().__init__(student, teacher)
        self.ce_weight, self.weight = ce_weight, weight
        s_c, t_c = student.feature_channels()[-2], teacher.feature_channels()[-2]
        self.paraphraser = Paraphraser(t_c, k)
        self.translator = Translator(s_c, t_c, k)

    def trainable_parameters(self, stage: str = "main"):
        if stage == "init":
            return list(self.paraphraser.parameters())
        return [*self.student.parameters(), *self.translator.parameters()]

    def forward(self, images, labels, ctx):
        t = self.teacher_features(images)
        f_t = t.feats[-2]
        if ctx.stage == "init":
            _, rec = self.paraphraser(f_t)  # the student does not run (official: it is not even called)
            return None, {"loss_rec": F.mse_loss(rec, f_t)}
        s = self.student.forward_features(images)
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(f_t)
        factor_s = self.translator(s.feats[-2])
        return s.logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(s.logits, labels),
            "loss_ft": self.weight * factor_transfer_loss(factor_s, factor_t),
        }
