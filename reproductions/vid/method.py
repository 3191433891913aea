import torch
import torch.nn.functional as F
from torch import nn

from kdbench.connectors import place_like, probe_features
from kdbench.distiller import Distiller

from .loss import EPS, INIT_PRED_VAR, init_log_scale, vid_loss


def _conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, padding=0, bias=False)


class VIDRegressor(nn.Module):
    """One stage of RepDistiller's ``VIDLoss(s, t, t)``: the mean regressor
    ``conv1x1(s->t) - ReLU - conv1x1(t->t) - ReLU - conv1x1(t->t)`` (no bias, PyTorch default init)
    and the per-teacher-channel variance parameter ``log_scale`` (alpha, learned)."""

    def __init__(self, s_channels: int, t_channels: int, init_pred_var: float = INIT_PRED_VAR, eps: float = EPS):
        super().__init__()
        mid = t_channels  # the official call is VIDLoss(s, t, t): num_mid_channel = teacher channels
        self.regressor = nn.Sequential(_conv1x1(s_channels, mid), nn.ReLU(), _conv1x1(mid, mid), nn.ReLU(),
                                       _conv1x1(mid, t_channels))
        self.log_scale = nn.Parameter(torch.full((t_channels,), init_log_scale(init_pred_var, eps)))

    def forward(self, f_s, f_t, eps: float = EPS):
        return vid_loss(f_s, f_t, self.regressor, self.log_scale, eps)


class VID(Distiller):
    """CE + vid_weight * sum over stages of the VID negative log-likelihood on ``feats[1:-1]``.

    As RepDistiller ``train_student.py --distill vid -a 0 -b 1``: one ``VIDRegressor`` per stage pair
    (channel counts from a dummy forward), whose parameters, the variances included, are trained with
    the student's SGD and weight decay (the official code appends the ``VIDLoss`` list to
    ``trainable_list``).
    """

    def __init__(self, student, teacher, ce_weight: float = 1.0, vid_weight: float = 1.0,
                 init_pred_var: float = INIT_PRED_VAR, eps: float = EPS):
        super().__init__(student, teacher)
        if teacher is None:
            raise ValueError("VID needs a teacher")
        self.ce_weight, self.vid_weight, self.eps = ce_weight, vid_weight, eps
        s_ch = [f.shape[1] for f in probe_features(student).feats[1:-1]]
        t_ch = [f.shape[1] for f in probe_features(teacher).feats[1:-1]]
        if len(s_ch) != len(t_ch):
            raise ValueError(f"VID pairs stages one to one; the student has {len(s_ch)} feature maps "
                             f"(feats[1:-1]), the teacher {len(t_ch)}")
        self.regressors = nn.ModuleList(VIDRegressor(s, t, init_pred_var, eps) for s, t in zip(s_ch, t_ch))
        # same device and memory format as the student (channels_last on CUDA by default)
        place_like(self.regressors, student)

    def forward(self, images, labels, ctx):
        out_s = self.student.forward_features(images)
        g_t = self.teacher_features(images).feats[1:-1]
        loss = sum(reg(f_s, f_t, self.eps) for reg, f_s, f_t in zip(self.regressors, out_s.feats[1:-1], g_t))
        return out_s.logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(out_s.logits, labels),
            "loss_vid": self.vid_weight * loss,
        }
