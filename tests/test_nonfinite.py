"""Numerical faults: a NaN or inf loss stops the run with one line naming where (train.nonfinite: stop), or
an isolated bad step is skipped and counted (skip); no checkpoint and no record ever holds a failed epoch."""
import json

import pytest
import torch
import torch.nn.functional as F
from test_train import loaders, tiny_net

from kdbench import checkpoint
from kdbench.cli import main
from kdbench.config import TrainConfig
from kdbench.distiller import Distiller
from kdbench.errors import TrainingFailed, UsageError
from kdbench.train import fit

CFG = TrainConfig(epochs=3, batch_size=32, lr=0.1, weight_decay=5e-4)  # 96 samples: 3 steps per epoch


class Faulty(Distiller):
    """Cross-entropy plus a ``loss_kd`` term that is NaN at the given (epoch, step)s (1-based); remembers the
    student's weights as every step began."""

    def __init__(self, student, teacher=None, bad=(), value=float("nan")):
        super().__init__(student, teacher)
        self.bad, self.value, self.steps, self.weights = set(bad), value, {}, []

    def forward(self, images, labels, ctx):
        self.steps[ctx.epoch] = step = self.steps.get(ctx.epoch, 0) + 1
        self.weights.append(((ctx.epoch, step), [p.detach().clone() for p in self.student.parameters()]))
        logits = self.student(images)
        kd = logits.pow(2).mean() * (self.value if (ctx.epoch, step) in self.bad else 0.01)
        return logits, {"loss_ce": F.cross_entropy(logits, labels), "loss_kd": kd}


def run(tmp_path, cfg=CFG, **kw):
    torch.manual_seed(0)
    method = Faulty(tiny_net(), **kw)
    return method, fit(method, *loaders(), cfg, run_dir=tmp_path, log=lambda *_: None)


def test_a_nan_loss_stops_the_run_naming_epoch_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingFailed) as err:
        run(tmp_path, bad={(2, 2)})
    ckpt = tmp_path / "checkpoint-main.pt"
    assert str(err.value) == (f"non-finite loss loss_kd=nan at epoch 2 step 2; the last good checkpoint is {ckpt} "
                              f"(epoch 1)")
    saved = checkpoint.load(ckpt)
    assert saved["trainer"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    assert [json.loads(line)["epoch"] for line in (tmp_path / "log-main.jsonl").read_text().splitlines()] == [1]
    with pytest.raises(TrainingFailed, match=r"loss_kd=inf at epoch 1 step 3; no checkpoint was written before"):
        run(tmp_path / "first", bad={(1, 3)}, value=float("inf"))
    assert not (tmp_path / "first" / "checkpoint-main.pt").exists()


def test_skip_leaves_an_isolated_bad_step_out_and_counts_it(tmp_path):
    method, state = run(tmp_path, TrainConfig(**{**CFG.__dict__, "nonfinite": "skip"}), bad={(2, 2)})
    weights = dict(method.weights)
    unchanged = zip(weights[(2, 2)], weights[(2, 3)])  # step 2 of epoch 2 did not move the weights
    assert all(torch.equal(a, b) for a, b in unchanged)
    assert not all(torch.equal(a, b) for a, b in zip(weights[(2, 1)], weights[(2, 2)]))  # step 1 did
    assert [h["skipped_steps"] for h in state["history"]] == [0, 1, 0] and state["skipped_steps"] == 1
    assert all(torch.isfinite(torch.tensor(h["loss_kd"])) for h in state["history"])  # means of applied steps
    assert [json.loads(line)["skipped_steps"] for line in (tmp_path / "log-main.jsonl").read_text().splitlines()] \
        == [0, 1, 0]


def test_skip_stops_after_too_many_bad_steps(tmp_path):
    cfg = TrainConfig(**{**CFG.__dict__, "nonfinite": "skip", "max_skipped_steps": 2})
    with pytest.raises(TrainingFailed, match=r"loss_kd=nan at epoch 2 step 2; 3 in a row skipped \(train\.max_skipped"
                                             r"_steps=2\); the last good checkpoint is .* \(epoch 1\)"):
        run(tmp_path / "row", cfg, bad={(1, 3), (2, 1), (2, 2)})
    with pytest.raises(TrainingFailed, match=r"epoch 3 step 1; 3 in the run skipped"):
        run(tmp_path / "total", cfg, bad={(1, 1), (2, 1), (3, 1)})


class Overflows(Distiller):
    """Finite losses, but the gradient of epoch 1's last step (3) is NaN (d sqrt(x)/dx at 0, times 0)."""

    def __init__(self, student, teacher=None):
        super().__init__(student, teacher)
        self.calls = 0

    def forward(self, images, labels, ctx):
        self.calls += 1
        logits = self.student(images)
        loss = F.cross_entropy(logits, labels)
        if self.calls == 3:
            loss = loss + (0 * next(self.student.parameters()).sum()).sqrt()
        return logits, {"loss_ce": loss}


def test_non_finite_weights_after_finite_losses_stop_before_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(TrainingFailed, match=r"non-finite weights \(student\.0\.weight.*\) after epoch 1 although"):
        fit(Overflows(tiny_net()), *loaders(), CFG, run_dir=tmp_path, log=lambda *_: None)
    assert not (tmp_path / "checkpoint-main.pt").exists()


def test_bad_guard_settings_are_config_errors():
    from kdbench.config import make_train
    base = {"epochs": 1, "batch_size": 8, "lr": 0.1, "weight_decay": 0.0}
    with pytest.raises(UsageError, match="nonfinite='ignore'; choose from: stop, skip"):
        make_train("t", {**base, "nonfinite": "ignore"})
    with pytest.raises(UsageError, match="max_skipped_steps must be a non-negative integer"):
        make_train("t", {**base, "max_skipped_steps": -1})


def test_cli_prints_one_line_exits_1_and_writes_no_record(sandbox, capsys, one_thread_module):
    """An infinite noise variance makes the noisy teacher's targets, and the loss, infinite at the first step."""
    args = ["reproduce", "noisy_teachers", "--preset", "smoke", "--set", "method.noise_variance=.inf",
            "--set", "teacher_train.epochs=1", "--set", "data_subset.train_per_class=4",
            "--set", "data_subset.test_per_class=2", "--latency-iters", "2"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("kdbench: error: non-finite loss loss_l2=inf at epoch 1 step 1; "
                                              "no checkpoint was written before")
    assert not list((sandbox / "results").rglob("*.json"))
