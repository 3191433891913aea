import torch
import torch.nn.functional as F
from torch import nn

from kdbench.distiller import Distiller

from .loss import hint_loss


class ConvRegressor(nn.Module):
    """The FitNet regressor of the CRD benchmark (RepDistiller ``models/util.py`` ``ConvReg``,
    ``use_relu=True``; mdistiller ``distillers/_common.py`` is the same): conv -> BatchNorm -> ReLU,
    PyTorch's default initialisation, the conv chosen from the two feature shapes:

    * student map twice as large: 3x3 conv, stride 2, padding 1;
    * student map half as large: 4x4 transposed conv, stride 2, padding 1;
    * otherwise (student not smaller): valid conv with kernel ``(1 + s_H - t_H, 1 + s_W - t_W)``
      (a 1x1 conv for equal sizes); a smaller student map is an error, as in the official code.
    """

    def __init__(self, s_shape, t_shape, use_relu: bool = True):
        super().__init__()
        _, s_c, s_h, s_w = s_shape
        _, t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(f"FitNet regressor: student hint size {s_h}x{s_w} cannot be mapped to "
                             f"teacher size {t_h}x{t_w}")
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU(inplace=True)
        self.use_relu = use_relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.relu(x) if self.use_relu else x


def _memory_format(model: nn.Module) -> torch.memory_format:
    for p in model.parameters():
        if p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
    return torch.contiguous_format


def probe_shapes(distiller: Distiller, size: int = 32) -> tuple[list, list]:
    """Shapes of student and teacher ``feats`` from one dummy batch ``randn(2, 3, size, size)`` in eval
    mode, as RepDistiller ``train_student.py`` does before building connectors."""
    student = distiller.student
    was_training = student.training
    device = next(student.parameters()).device
    data = torch.randn(2, 3, size, size).to(device)
    student.eval()
    try:
        with torch.no_grad():
            feats_s = student.forward_features(data).feats
            feats_t = distiller.teacher_features(data).feats
    finally:
        student.train(was_training)
        distiller.__dict__.pop("_teacher_step", None)  # not a training step: drop the teacher-output cache
    return [f.shape for f in feats_s], [f.shape for f in feats_t]


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
        shapes_s, shapes_t = probe_shapes(self)
        if not (0 <= hint_layer < len(shapes_s) - 1 and hint_layer < len(shapes_t) - 1):
            raise ValueError(f"hint_layer {hint_layer} must index a 4-D feature map of both models")
        self.conv_reg = ConvRegressor(shapes_s[hint_layer], shapes_t[hint_layer])
        # same device and memory format as the student (channels_last on CUDA by default)
        self.conv_reg.to(next(student.parameters()).device, memory_format=_memory_format(student))

    def forward(self, images, labels, ctx):
        out_s = self.student.forward_features(images)
        out_t = self.teacher_features(images)
        regressed = self.conv_reg(out_s.feats[self.hint_layer])
        return out_s.logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(out_s.logits, labels),
            "loss_hint": self.hint_weight * hint_loss(regressed, out_t.feats[self.hint_layer]),
        }
