"""The trainer: schedule, logging, atomic checkpoints and exact resume."""
import json

import pytest
import torch
from torch import nn

from kdbench.config import TrainConfig
from kdbench.data.loader import DeviceLoader
from kdbench.distiller import Distiller, StepContext, Vanilla
from kdbench.train import fit

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tiny_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def loaders(seed=0):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (96,), generator=g)
    kw = dict(batch_size=32, device=torch.device("cpu"), mean=MEAN, std=STD)
    return DeviceLoader(x, y, train=True, seed=seed, **kw), DeviceLoader(x[:32], y[:32], train=False, **kw)


CFG = TrainConfig(epochs=3, batch_size=32, lr=0.1, weight_decay=5e-4, milestones=[1, 2], gamma=0.5)


def test_lr_schedule_follows_the_official_rule():
    cfg = TrainConfig(epochs=240, batch_size=64, lr=0.05, weight_decay=5e-4, milestones=[150, 180, 210])
    assert cfg.lr_at(1) == 0.05 and cfg.lr_at(150) == 0.05
    assert abs(cfg.lr_at(151) - 0.005) < 1e-12 and abs(cfg.lr_at(240) - 0.05e-3) < 1e-12


def test_fit_logs_and_resume_is_exact(tmp_path):
    torch.manual_seed(0)
    a = Vanilla(tiny_net())
    b = Vanilla(tiny_net())
    b.load_state_dict(a.state_dict())
    train, test = loaders()
    full = fit(a, train, test, CFG, run_dir=tmp_path / "a", log=lambda *_: None)
    # b: interrupted after one epoch, then resumed in a fresh process-like object
    fit(b, *loaders(), TrainConfig(**{**CFG.__dict__, "epochs": 1}), run_dir=tmp_path / "b", log=lambda *_: None)
    c = Vanilla(tiny_net())
    resumed = fit(c, *loaders(), CFG, run_dir=tmp_path / "b", resume=True, log=lambda *_: None)
    for (k, v1), v2 in zip(a.state_dict().items(), c.state_dict().values()):
        torch.testing.assert_close(v1, v2, msg=k)
    assert resumed["best_top1"] == full["best_top1"]
    lines = [json.loads(l) for l in (tmp_path / "a" / "log-main.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2, 3]
    assert [l["lr"] for l in lines] == [0.1, 0.05, 0.025]
    assert {"loss_ce", "train_img_s", "test_top1", "test_top5"} <= set(lines[0])
    assert not list((tmp_path / "a").glob("*.tmp"))


class TwoTerms(Distiller):
    """A method with an extra learnable part, per-sample indices and a second stage."""

    def __init__(self, student, teacher=None):
        super().__init__(student, teacher)
        self.connector = nn.Linear(10, 10)
        self.seen = set()

    def trainable_parameters(self, stage="main"):
        return list(self.connector.parameters()) if stage == "init" else super().trainable_parameters(stage)

    def forward(self, images, labels, ctx: StepContext):
        self.seen.update(ctx.indices.tolist())
        logits = self.student(images)
        losses = {"loss_aux": self.connector(logits).pow(2).mean()}
        if ctx.stage == "main":
            losses["loss_ce"] = nn.functional.cross_entropy(logits, labels)
        return logits, losses


def test_named_terms_extra_parameters_indices_and_stages(tmp_path):
    torch.manual_seed(0)
    method = TwoTerms(tiny_net(), teacher=tiny_net())
    assert method.num_extra_parameters() == 110
    assert not any(p.requires_grad for p in method.teacher.parameters())
    train, test = loaders()
    student_before = [p.clone() for p in method.student.parameters()]
    fit(method, train, test, TrainConfig(epochs=1, batch_size=32, lr=0.1, weight_decay=0.0),
        run_dir=tmp_path, stage="init", log=lambda *_: None)
    assert all(torch.equal(a, b) for a, b in zip(student_before, method.student.parameters()))
    assert method.seen == set(range(96))
    state = fit(method, train, test, CFG, run_dir=tmp_path, log=lambda *_: None)
    assert {"loss_aux", "loss_ce"} <= set(state["history"][-1])
    assert not all(torch.equal(a, b) for a, b in zip(student_before, method.student.parameters()))
    assert method.teacher.training is False
    saved = torch.load(tmp_path / "checkpoint-main.pt", weights_only=True)
    assert not any(k.startswith("teacher.") for k in saved["model"]) and "connector.weight" in saved["model"]


def test_methods_declaring_data_receive_the_training_set_description(sandbox):
    """A method that declares ``data`` (as CRD's memory bank needs) gets size, classes and labels."""
    import types

    from kdbench.config import resolve
    from kdbench.registry import get_paper
    from kdbench.reproduce import build_distiller

    seen = {}

    class NeedsData(Distiller):
        def __init__(self, student, teacher, data, weight: float = 1.0):
            super().__init__(student, teacher)
            seen["data"], seen["weight"] = data, weight

    paper = get_paper("dkd")
    fake = types.SimpleNamespace(**{k: getattr(paper, k) for k in ("id", "spec")}, method_class=lambda: NeedsData)
    cfg = resolve("dkd", paper.spec, "smoke", "resnet20-resnet8", 0)
    cfg.method = {"weight": 2.0}
    from kdbench.distiller import DataInfo
    info = DataInfo(num_samples=96, num_classes=10, image_size=32, train_labels=torch.zeros(96, dtype=torch.long))
    build_distiller(fake, cfg, tiny_net(), tiny_net(), data=info)
    assert seen == {"data": info, "weight": 2.0}
    cfg.method = {"data": 1}
    import pytest

    from kdbench.errors import UsageError
    with pytest.raises(UsageError, match="unknown method option"):
        build_distiller(fake, cfg, tiny_net(), tiny_net(), dry=True)


def _fit_with(tmp_path, name, **options):
    torch.manual_seed(0)
    method = Vanilla(tiny_net())
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 2, **options})
    state = fit(method, *loaders(), cfg, run_dir=tmp_path / name, log=lambda *_: None)
    return method, state


def test_fused_optimizer_and_compile_flags_keep_the_update_rule(tmp_path):
    """The opt-in speed flags change kernels, not the recipe: the same weights up to float rounding,
    and a compiled run's checkpoint keeps the plain state-dict keys."""
    eager, _ = _fit_with(tmp_path, "eager")
    fused, _ = _fit_with(tmp_path, "fused", fused_optimizer=True)
    for (k, v1), v2 in zip(eager.state_dict().items(), fused.state_dict().values()):
        torch.testing.assert_close(v1, v2, rtol=1e-4, atol=1e-5, msg=k)
    compiled, _ = _fit_with(tmp_path, "compiled", compile=True)
    assert compiled.student._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for (k, v1), v2 in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(v1, v2, rtol=1e-3, atol=1e-4, msg=k)


def test_per_step_warmup_and_tie_rule_in_lr_at_and_is_best():
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.1, weight_decay=0, warmup_epochs=2, warmup_unit="step")
    assert [cfg.lr_at(1, i, 4) for i in range(4)] == pytest.approx([0.1 * k / 8 for k in range(1, 5)])
    assert [cfg.lr_at(2, i, 4) for i in range(4)] == pytest.approx([0.1 * k / 8 for k in range(5, 9)])
    assert cfg.lr_at(3, 0, 4) == cfg.lr_at(3) == 0.1 and cfg.warms_per_step(2) and not cfg.warms_per_step(3)
    per_epoch = TrainConfig(epochs=3, batch_size=32, lr=0.1, weight_decay=0, warmup_epochs=2)
    assert [per_epoch.lr_at(e) for e in (1, 2, 3)] == [0.05, 0.1, 0.1] and not per_epoch.warms_per_step(1)
    first, last = CFG, TrainConfig(**{**CFG.__dict__, "best_tie": "last"})
    assert not first.is_best(50.0, 50.0) and last.is_best(50.0, 50.0)
    assert first.is_best(50.1, 50.0) and not last.is_best(49.9, 50.0)


class LrProbe(Vanilla):
    """Adds a loss ``w`` on an extra weight: its gradient is 1, so without momentum or decay every
    optimizer step moves it by exactly the step's lr."""

    def __init__(self, student):
        super().__init__(student)
        self.probe = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(self.probe.weight)
        self.moves: list[float] = []

    def forward(self, images, labels, ctx):
        self.moves.append(-self.probe.weight.item())  # where the previous steps have taken it
        logits, losses = super().forward(images, labels, ctx)
        return logits, {**losses, "probe": self.probe.weight.sum()}


def test_fit_raises_the_lr_every_step_during_a_per_step_warmup(tmp_path):
    torch.manual_seed(0)
    method = LrProbe(tiny_net())
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.1, weight_decay=0, momentum=0, warmup_epochs=1,
                      warmup_unit="step")
    fit(method, *loaders(), cfg, run_dir=tmp_path, log=lambda *_: None)
    lrs = [b - a for a, b in zip(method.moves, method.moves[1:])]  # 3 steps per epoch: 5 measured
    assert lrs == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1], rel=1e-5)


def test_best_tie_last_keeps_the_last_of_equal_epochs(tmp_path):
    """With lr 0 and frozen BN statistics every epoch scores the same: ``first`` names epoch 1, ``last``
    the final epoch (and keeps that epoch's weights as "best")."""
    results = {}
    for tie in ("first", "last"):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(8, 10))
        cfg = TrainConfig(epochs=3, batch_size=32, lr=0.0, weight_decay=0, best_tie=tie, keep_checkpoints=["best"])
        state = fit(Vanilla(net), *loaders(), cfg, run_dir=tmp_path / tie, log=lambda *_: None)
        assert len({h["test_top1"] for h in state["history"]}) == 1
        results[tie] = state["best_epoch"]
        assert torch.load(tmp_path / tie / "student-main-best.pt", weights_only=True)["epoch"] == state["best_epoch"]
    assert results == {"first": 1, "last": 3}
