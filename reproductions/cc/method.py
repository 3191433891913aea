import torch.nn.functional as F
from torch import nn

from kdbench.connectors import probe_features
from kdbench.distiller import Distiller

from .loss import cc_loss


class LinearEmbed(nn.Module):
    """RepDistiller ``models/util.py:LinearEmbed``: flatten, then one ``nn.Linear`` (no normalisation)."""

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return self.linear(x.reshape(x.shape[0], -1))


class CC(Distiller):
    """CE + cc_weight * Correlation(embed_s(f_s), embed_t(f_t)) on the pooled features.

    As RepDistiller ``train_student.py --distill correlation -a 0 -b 0.02``: two ``LinearEmbed``s to
    ``feat_dim`` = 128, one on the student's and one on the teacher's ``feat[-1]`` (input sizes from a
    dummy forward), BOTH trained (both are in the official ``trainable_list``; the teacher's features
    are detached, but its embedding receives the loss gradient) with the student's SGD and weight decay.
    """

    def __init__(self, student, teacher, ce_weight: float = 1.0, cc_weight: float = 0.02, feat_dim: int = 128):
        super().__init__(student, teacher)
        if teacher is None:
            raise ValueError("CC needs a teacher")
        self.ce_weight, self.cc_weight = ce_weight, cc_weight
        s_dim = probe_features(student).feats[-1].reshape(2, -1).shape[1]
        t_dim = probe_features(teacher).feats[-1].reshape(2, -1).shape[1]
        device = next(student.parameters()).device
        self.embed_s = LinearEmbed(s_dim, feat_dim).to(device)
        self.embed_t = LinearEmbed(t_dim, feat_dim).to(device)

    def forward(self, images, labels, ctx):
        if images.shape[0] < 2:
            raise ValueError("CC needs a batch of at least 2 samples (correlation between samples)")
        out_s = self.student.forward_features(images)
        f_t = self.teacher_features(images).feats[-1]
        e_s = self.embed_s(out_s.feats[-1])
        e_t = self.embed_t(f_t)  # teacher features carry no grad; the embedding itself is trained
        return out_s.logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(out_s.logits, labels),
            "loss_cc": self.cc_weight * cc_loss(e_s, e_t),
        }
