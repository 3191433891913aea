import torch
import torch.nn.functional as F
from torch import nn

from kdbench.connectors import place_like, probe_features
from kdbench.distiller import Distiller

from .loss import hcl


class ABF(nn.Module):
    """Attention-based fusion (official ``ABF``): a 1x1 conv + BN to ``mid`` channels; where a deeper
    level's output ``residual`` exists, it is resized (nearest) to this map and the two are mixed with
    two sigmoid attention maps from a 1x1 conv on their concatenation; the result is resized (nearest)
    to the teacher map's size, then a 3x3 conv + BN gives the teacher's channels. Returns
    ``(output for the loss, fused map passed to the next shallower level)``."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x, residual=None, out_size: int | None = None):
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            z = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * z[:, 0:1] + residual * z[:, 1:2]
        if out_size is not None and x.shape[-1] != out_size:
            x = F.interpolate(x, size=(out_size, out_size), mode="nearest")
        return self.conv2(x), x


def _as_map(f: torch.Tensor) -> torch.Tensor:
    """The pooled vector as the official models return it: ``N x C x 1 x 1``."""
    return f if f.dim() == 4 else f.view(f.shape[0], f.shape[1], 1, 1)


class ReviewKD(Distiller):
    """CE + review_weight * min(1, (epoch - 1) / warmup_epochs) * HCL(fused student maps, teacher maps).

    As dvlab-research/ReviewKD @cede6ea ``CIFAR-100/train.py`` + ``model/reviewkd.py``:

    * teacher levels: the teacher's pre-ReLU stage outputs and its pooled feature,
      ``is_feat=True, preact=True`` minus the stem (``t_features[1:]``);
    * student levels: the same number of the student's last (post-activation) features, ``is_feat=True``;
    * one ABF per level; the deepest has no fusion, each shallower one fuses the deeper level's map
      (the review path); mid channels = ``min(512, channels of the deepest student level)``. The
      official code lists the channel counts and sizes per architecture; ours reads them from a dummy
      forward, which gives the same numbers for every pair the official code defines;
    * the warm-up uses the official 0-based epoch (``min(1, epoch / 20)``): weight 0 in the first epoch;
    * the teacher is never put in eval mode by the official code, so its BatchNorm runs on batch
      statistics during training: ``teacher_bn = "batch"``.
    """

    teacher_bn = "batch"

    def __init__(self, student, teacher, ce_weight: float = 1.0, review_weight: float = 1.0,
                 warmup_epochs: float = 20.0, max_mid_channels: int = 512):
        super().__init__(student, teacher)
        if teacher is None:
            raise ValueError("ReviewKD needs a teacher")
        self.ce_weight, self.review_weight, self.warmup_epochs = ce_weight, review_weight, warmup_epochs
        with torch.random.fork_rng(devices=[]):  # sizing must not shift the initialisation's RNG stream
            s_feats, t_out = probe_features(student).feats, probe_features(teacher)
        if t_out.preact_feats is None:
            raise ValueError("ReviewKD needs the teacher's pre-activation features")
        t_feats = t_out.preact_feats[1:]
        self.levels = len(t_feats)
        if len(s_feats) < self.levels:
            raise ValueError(f"ReviewKD pairs {self.levels} teacher levels with the student's last ones; "
                             f"the student has {len(s_feats)}")
        s_channels = [f.shape[1] for f in s_feats[-self.levels:]]
        t_channels = [f.shape[1] for f in t_feats]
        self.out_sizes = [_as_map(f).shape[-1] for f in t_feats]
        mid = min(max_mid_channels, s_channels[-1])
        # built shallow to deep, as the official code (same order of initialisation draws)
        self.abfs = nn.ModuleList(ABF(c_in, mid, c_out, fuse=i < self.levels - 1)
                                  for i, (c_in, c_out) in enumerate(zip(s_channels, t_channels)))
        place_like(self.abfs, student)

    def review(self, student_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The fused student maps, shallow to deep, from the student's last ``levels`` features."""
        feats = [_as_map(f) for f in student_feats[-self.levels:]]
        outputs, residual = [None] * self.levels, None
        for i in reversed(range(self.levels)):
            outputs[i], residual = self.abfs[i](feats[i], residual, self.out_sizes[i])
        return outputs

    def warmup_factor(self, epoch: int) -> float:
        return min(1.0, (epoch - 1) / self.warmup_epochs) if self.warmup_epochs > 0 else 1.0

    def forward(self, images, labels, ctx):
        out_s = self.student.forward_features(images)
        t_feats = [_as_map(f) for f in self.teacher_features(images).preact_feats[1:]]
        loss = hcl(self.review(out_s.feats), t_feats)
        return out_s.logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(out_s.logits, labels),
            "loss_review": self.review_weight * self.warmup_factor(ctx.epoch) * loss,
        }
