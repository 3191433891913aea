"""The contract every distillation method implements.

A method is a :class:`Distiller`: an ``nn.Module`` that holds the student, the
frozen teacher (in eval mode unless a method says otherwise, never optimised) and any extra learnable
parts (connectors, embeddings, memory banks) registered as ordinary
submodules. Its training ``forward`` returns the student logits and a dict of
*named, already weighted* loss terms; the trainer sums the terms and logs each
by name. Nothing else is special-cased in the trainer:

* per-sample needs (CRD's memory bank) read ``ctx.indices``; a method whose ``__init__`` declares
  ``data`` receives a :class:`DataInfo` (dataset size, classes, training labels);
* epoch-dependent weights (DKD's warm-up) read ``ctx.epoch``;
* multi-stage recipes (AB, FT, FSP initialisation) declare ``stages`` in the
  paper config; ``ctx.stage`` names the stage being trained and
  :meth:`Distiller.trainable_parameters` may return a different set per stage;
* extra parameters are every parameter that is neither the student's nor the
  teacher's; they are optimised, checkpointed and counted on the leaderboard.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class StepContext:
    """What a method may know about the current step besides the batch."""

    epoch: int  # 1-based, as in the official CRD/DKD code
    epochs: int  # epochs in this stage
    stage: str = "main"
    indices: torch.Tensor | None = None  # dataset positions of the batch samples
    views: torch.Tensor | None = None  # which augmented view of each sample (see DeviceLoader.view_ids)


@dataclass(frozen=True)
class DataInfo:
    """What a method may know about its training set at construction (e.g. CRD's memory bank
    needs one slot per sample and the labels to draw negatives; a mimic-learning method labels new
    inputs made from the training inputs). A method receives it by declaring a ``data`` parameter
    in ``__init__``."""

    num_samples: int
    num_classes: int
    image_size: int
    train_labels: torch.Tensor  # int64, on the run's device, indexed like ``StepContext.indices``
    dataset: str | None = None  # the run's dataset name (kdbench.data.DATASETS)
    # the training inputs as stored, before augmentation and normalisation, indexed like the labels:
    # uint8 N x C x H x W images on the device, or float64 N x F raw attributes (tabular, on the CPU)
    train_inputs: torch.Tensor | None = None


class Distiller(nn.Module):
    """Base class: student + frozen teacher + extra learnable parts.

    ``teacher_bn = "batch"`` in a subclass runs the teacher's BatchNorm on batch statistics during
    training (the teacher left in train mode, as some official code does); its weights stay frozen.
    """

    teacher_bn = "eval"  # eval: running statistics (the usual) | batch: train-mode BN in training

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.logit_cache = None  # a kdbench.teacher_cache.TeacherLogitCache when the run enables it
        self._ctx: StepContext | None = None
        self.register_forward_pre_hook(_remember_context)
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:  # BN statistics of the teacher never move, unless asked
            self.teacher.train(mode and self.teacher_bn == "batch")
        return self

    def forward(self, images: torch.Tensor, labels: torch.Tensor, ctx: StepContext):
        """Return ``(student_logits, {"loss_name": weighted_loss_tensor, ...})``; the logits may be
        None in a stage where the student does not run (e.g. FT's paraphraser initialisation)."""
        raise NotImplementedError

    def extra_modules(self) -> dict[str, nn.Module]:
        """Learnable submodules that are neither student nor teacher."""
        return {n: m for n, m in self.named_children() if n not in ("student", "teacher")}

    def extra_parameters(self) -> Iterator[nn.Parameter]:
        for module in self.extra_modules().values():
            yield from (p for p in module.parameters() if p.requires_grad)

    def trainable_parameters(self, stage: str = "main") -> list[nn.Parameter]:
        """Parameters optimised in ``stage``. Override for multi-stage recipes."""
        return [*self.student.parameters(), *self.extra_parameters()]

    def num_extra_parameters(self) -> int:
        return sum(p.numel() for p in self.extra_parameters())

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's logits (no grad). Methods get teacher outputs only through this or
        :meth:`teacher_features`, so a combined loss (``+kd``) can reuse them without a second pass.
        With a teacher-logit cache (:mod:`kdbench.teacher_cache`) the logits of views seen before are
        looked up; ``images`` must then be the step's batch as the loader produced it."""
        ctx = self._ctx
        if (self.logit_cache is not None and self.training and ctx is not None and ctx.views is not None
                and ctx.indices is not None and len(ctx.indices) == len(images)):
            logits = self.logit_cache.lookup(self.teacher, images, ctx.indices, ctx.views)
        else:
            logits = self.teacher(images)
        self._teacher_step = (images, logits)
        return logits

    @torch.no_grad()
    def teacher_features(self, images: torch.Tensor):
        """The frozen teacher's ``FeatureOutput(logits, feats, preact_feats)`` (no grad)."""
        out = self.teacher.forward_features(images)
        self._teacher_step = (images, out.logits)
        return out

    def step_teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher logits of this step's batch: reused if the method already ran the teacher."""
        cached = self.__dict__.pop("_teacher_step", None)
        if cached is not None and cached[0] is images:
            return cached[1]
        return self.teacher_logits(images)


def _remember_context(module: Distiller, args) -> None:
    """Keep the step's context (indices, views) for :meth:`Distiller.teacher_logits`."""
    module._ctx = args[2] if len(args) > 2 else None


def add_kd(distiller: Distiller, weight: float, temperature: float) -> Distiller:
    """Add Hinton's KD term ``loss_kd_plus`` to any method (the CRD table's "+KD" rows).

    A forward hook on the distiller: it takes the step's student logits and the teacher logits the
    method already computed (or runs the teacher once), so no method needs code for it and the
    state dict is unchanged.
    """
    from .losses import kd_loss

    if distiller.teacher is None:
        raise ValueError("+kd needs a teacher")

    def hook(module: Distiller, args, output):
        images = args[0]
        logits, losses = output
        if logits is None:  # a stage in which the student does not run
            return output
        teacher_logits = module.step_teacher_logits(images)
        return logits, {**losses, "loss_kd_plus": weight * kd_loss(logits, teacher_logits, temperature)}

    distiller.register_forward_hook(hook)
    return distiller


class Vanilla(Distiller):
    """Cross-entropy only: the student (or teacher) trained without a teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, ce_weight: float = 1.0):
        super().__init__(student, None)
        self.ce_weight = ce_weight

    def forward(self, images, labels, ctx):
        logits = self.student(images)
        return logits, {"loss_ce": self.ce_weight * F.cross_entropy(logits, labels)}
