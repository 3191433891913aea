import math

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.connectors import place_like, probe_features
from kdbench.distiller import Distiller

from .loss import bn_margin, ofd_feature_loss


def connector(s_channels: int, t_channels: int) -> nn.Sequential:
    """Official ``build_feature_connector``: 1x1 conv (no bias, N(0, sqrt(2 / t_channels))) + BN (1, 0)."""
    conv = nn.Conv2d(s_channels, t_channels, kernel_size=1, bias=False)
    bn = nn.BatchNorm2d(t_channels)
    with torch.no_grad():
        conv.weight.normal_(0, math.sqrt(2.0 / t_channels))
        bn.weight.fill_(1)
        bn.bias.zero_()
    return nn.Sequential(conv, bn)


class OFD(Distiller):
    """CE + ofd_weight * sum_i partial_L2(connector_i(s_i), t_i, margin_i) / 2^(n-1-i) / batch.

    As ``CIFAR-100/distiller.py`` + ``train_with_distillation.py``: the student's and teacher's pre-ReLU
    stage features (``preact_feats[1:-1]``, aligned with ``get_bn_before_relu()``), one connector per
    stage trained with the student, the teacher's margins computed once from its BatchNorms, the
    deeper stages weighted more (the last by 1, the one before by 1/2, ...), the sum divided by the
    batch size and by 1000 (``ofd_weight`` = 1e-3).

    ``teacher_bn``: ``"batch"`` (the default, as the official CIFAR-100 code, which calls
    ``t_net.train()`` every epoch, so the teacher's BatchNorm runs on batch statistics); ``"eval"`` for
    the usual frozen teacher on running statistics.

    Any zoo pair works whose teacher has ``get_bn_before_relu()`` matching its ``preact_feats[1:-1]``
    and whose stage maps have the teacher's spatial sizes (the 1x1 connector does not resize).
    """

    teacher_bn = "batch"

    def __init__(self, student, teacher, ce_weight: float = 1.0, ofd_weight: float = 1e-3, teacher_bn: str = "batch"):
        super().__init__(student, teacher)
        if teacher is None:
            raise ValueError("OFD needs a teacher")
        if teacher_bn not in ("batch", "eval"):
            raise ValueError(f"teacher_bn must be batch or eval, got {teacher_bn!r}")
        self.teacher_bn = teacher_bn
        self.ce_weight, self.ofd_weight = ce_weight, ofd_weight
        with torch.random.fork_rng(devices=[]):  # sizing draws nothing from the run's RNG stream
            s_shapes = [tuple(f.shape[1:]) for f in probe_features(student).preact_feats[1:-1]]
            t_shapes = [tuple(f.shape[1:]) for f in probe_features(teacher).preact_feats[1:-1]]
        bns = teacher.get_bn_before_relu()
        if not len(s_shapes) == len(t_shapes) == len(bns):
            raise ValueError(f"OFD pairs stages one to one: student {len(s_shapes)}, teacher {len(t_shapes)} features, "
                             f"{len(bns)} teacher BatchNorms")
        if [bn.num_features for bn in bns] != [t[0] for t in t_shapes]:
            raise ValueError("the teacher's BatchNorms before ReLU do not match its pre-ReLU features")
        mismatch = [(i, s[1:], t[1:]) for i, (s, t) in enumerate(zip(s_shapes, t_shapes)) if s[1:] != t[1:]]
        if mismatch:
            raise ValueError("OFD's 1x1 connectors need student stage maps of the teacher's spatial size; "
                             + ", ".join(f"stage {i}: student {s}, teacher {t}" for i, s, t in mismatch))
        self.connectors = nn.ModuleList(connector(s[0], t[0]) for s, t in zip(s_shapes, t_shapes))
        place_like(self.connectors, student)
        device = next(teacher.parameters()).device
        for i, bn in enumerate(bns):
            self.register_buffer(f"margin{i}", bn_margin(bn.weight, bn.bias).view(1, -1, 1, 1).to(device))

    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin{i}") for i in range(len(self.connectors))]

    def forward(self, images, labels, ctx):
        out_s = self.student.forward_features(images)
        replay = getattr(self.student, "replay_official_preact_bn_update", None)
        if replay is not None:  # the official preReLU features re-run the student's BNs (stats move twice)
            replay(out_s.feats)
        t_feats = self.teacher_features(images).preact_feats[1:-1]
        s_feats = [conn(f) for conn, f in zip(self.connectors, out_s.preact_feats[1:-1])]
        loss = ofd_feature_loss(s_feats, t_feats, self.margins())
        return out_s.logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(out_s.logits, labels),
            "loss_ofd": self.ofd_weight * loss / images.shape[0],
        }
