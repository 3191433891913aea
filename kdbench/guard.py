"""Non-finite losses and weights (``train.nonfinite``): a run never goes on, nor checkpoints, with NaN.

``stop`` (the default): a NaN or inf in any loss term stops the run with one line naming the epoch, the
step and the terms, and the last good checkpoint::

    non-finite loss loss_kd=nan at epoch 3 step 17; the last good checkpoint is runs/.../checkpoint-main.pt (epoch 2)

It costs no device synchronisation: each step only keeps a reference to its (detached) loss tensors, which
launches no kernel; at the end of the epoch, where the trainer synchronises anyway, one stacked
``isfinite`` over the epoch's totals finds the first bad step. The steps after a bad one run with NaN
weights (wasted, but at most one epoch), and the epoch is neither logged nor checkpointed, so the run's
checkpoint stays that of the previous epoch. Checking each step as it runs would stop sooner but costs a
device-to-host synchronisation per step on CUDA (tens of microseconds and a drained launch queue).

``skip``: a step whose total loss is not finite is not applied (no optimizer step: weights and momentum
unchanged) and is counted; the count of an epoch goes into its log record (``skipped_steps``), the run's
into the results record. Deciding whether to step needs the loss's value, so ``skip`` synchronises once per
step on CUDA (and, under torchrun, agrees with the other processes in one small collective, since
averaged gradients carry one process's NaN to all). More than ``train.max_skipped_steps`` skipped steps in
a row, or in the whole run, stop it as above: skipping is meant for an isolated spike (a bf16 overflow, an
outlier batch), whereas a cause that persists makes every following step bad. The default of 10 stops such
a run within 10 steps, and 10 skipped steps are 0.005 % of a 240-epoch CIFAR run (about 188,000 steps), far
too few to move its accuracy. A skipped step's forward has still run: BatchNorm statistics and a method's
per-step state (memory banks) it updated stay updated.

Either way, before every checkpoint the weights and buffers are checked once (one pass per epoch): a NaN that
got in with finite losses (overflowing gradients, a NaN activation in a skipped step) stops the run too.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from . import distributed
from .errors import TrainingFailed


class NonFiniteGuard:
    """Per-stage bookkeeping of non-finite losses; ``state``: the trainer state (skip counts survive a resume)."""

    def __init__(self, mode: str, max_skipped: int, stage: str, ckpt_path: Path, state: dict):
        self.mode, self.max_skipped, self.stage, self.ckpt_path = mode, max_skipped, stage, Path(ckpt_path)
        self.total, self.in_a_row = state.get("skipped_steps", 0), state.get("skipped_in_a_row", 0)
        self.last_good = state["epoch"]
        self.begin(0)

    def begin(self, epoch: int) -> None:
        self.epoch, self.step, self.skipped, self.steps = epoch, 0, 0, []

    def allow(self, total: torch.Tensor, losses: dict) -> bool:
        """Called after the backward pass of a step: False if the optimizer step must be skipped."""
        self.step += 1
        if self.mode == "stop":  # a reference, no kernel: checked at the end of the epoch
            self.steps.append((total.detach(), {k: v.detach() for k, v in losses.items()}))
            return True
        bad = (~torch.isfinite(total.detach())).to(torch.int32)
        if distributed.active():
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if not bool(bad):  # one synchronisation per step (skip mode only)
            self.in_a_row = 0
            return True
        self.skipped, self.total, self.in_a_row = self.skipped + 1, self.total + 1, self.in_a_row + 1
        if self.in_a_row > self.max_skipped or self.total > self.max_skipped:
            which = f"{self.in_a_row} in a row" if self.in_a_row > self.max_skipped else f"{self.total} in the run"
            raise TrainingFailed(self._message(losses, f"; {which} skipped (train.max_skipped_steps="
                                                       f"{self.max_skipped})"))
        return False

    def end(self, distiller: torch.nn.Module, record: dict, state: dict) -> None:
        """After an epoch's steps: raise if a loss (``stop``) or a weight is not finite; else note the counts."""
        if self.steps:
            totals = torch.stack([t.float() for t, _ in self.steps])
            bad = (~torch.isfinite(totals)).nonzero()
            if len(bad):
                self.step = int(bad[0]) + 1
                raise TrainingFailed(self._message(self.steps[self.step - 1][1]))
        self.steps = []
        tensors = {k: v for k, v in distiller.state_dict().items()
                   if not k.startswith("teacher.") and v.is_floating_point()}
        finite = torch.stack([torch.isfinite(v).all().cpu() for v in tensors.values()]) if tensors else torch.ones(1)
        if not bool(finite.all()):
            names = [k for k, ok in zip(tensors, finite.tolist()) if not ok]
            raise TrainingFailed(f"non-finite weights ({', '.join(names[:3])}{' ...' if len(names) > 3 else ''}) "
                                 f"after epoch {self.epoch} although no loss was non-finite in an applied step"
                                 f"{self._last_good()}")
        record["skipped_steps"] = self.skipped
        state.update(skipped_steps=self.total, skipped_in_a_row=self.in_a_row)
        self.last_good = self.epoch

    def _message(self, losses: dict, extra: str = "") -> str:
        values = {k: float(v.detach()) for k, v in losses.items()}
        terms = " ".join(f"{k}={v:g}" for k, v in values.items() if not math.isfinite(v))
        return (f"non-finite loss {terms or 'total=' + format(sum(values.values()), 'g')} at epoch {self.epoch} "
                f"step {self.step}{extra}{self._last_good()}")

    def _last_good(self) -> str:
        stage = "" if self.stage == "main" else f" of stage {self.stage}"
        if self.last_good and self.ckpt_path.exists():
            return f"; the last good checkpoint{stage} is {self.ckpt_path} (epoch {self.last_good})"
        return f"; no checkpoint{stage} was written before"
