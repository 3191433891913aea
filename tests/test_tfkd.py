"""Tf-KD: the three official losses against hand-derived values, the lr schedule epoch by epoch against the
official schedulers, the resolved configs against the official params.json files, the self chain."""
import csv
import math
import warnings
from bisect import bisect_right
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kdbench.config import resolve
from kdbench.models import create_model
from kdbench.registry import get_paper
from reproductions.tfkd.loss import kd_loss, kl_mean, label_smoothing_loss, manual_teacher, reg_loss
from reproductions.tfkd.method import TfKD


def softmax(z, t=1.0):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def hand_kl_mean(student_rows, target_rows):
    """sum over every entry of q (log q - log p), divided by B*K: nn.KLDivLoss() with reduction 'mean'."""
    total = sum(q * (math.log(q) - math.log(p)) for ps, qs in zip(student_rows, target_rows) for p, q in zip(ps, qs))
    return total / (len(student_rows) * len(student_rows[0]))


# ------------------------------------------------------------------------------------------------ losses


def test_kd_and_self_loss_against_hand_derived_values():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    t = torch.tensor([[0.0, 1.0, 0.0], [3.0, 0.0, 1.0]])
    labels = torch.tensor([0, 1])
    T, alpha, mult = 4.0, 0.9, 50.0
    ce = -(math.log(softmax([1.0, 0.0, -1.0])[0]) + math.log(softmax([0.5, 2.0, 0.0])[1])) / 2
    kl = hand_kl_mean([softmax(r, T) for r in s.tolist()], [softmax(r, T) for r in t.tolist()])  # / (2 * 3)
    ce_term, kd_term = kd_loss(s, t, labels, alpha, T)  # loss_kd
    assert ce_term.item() == pytest.approx((1 - alpha) * ce, rel=1e-6)
    assert kd_term.item() == pytest.approx(alpha * kl * T * T, rel=1e-6)
    _, self_term = kd_loss(s, t, labels, alpha, T, multiplier=mult)  # loss_kd_self
    assert self_term.item() == pytest.approx(alpha * kl * T * T * mult, rel=1e-6)


def test_kd_loss_is_the_official_expression():
    """my_loss_function.py loss_kd_self, verbatim (nn.KLDivLoss() with its default 'mean')."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 100, generator=g), torch.randn(8, 100, generator=g)
    labels = torch.randint(0, 100, (8,), generator=g)
    alpha, T, mult = 0.95, 6.0, 50.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # KLDivLoss 'mean' warns that it divides by batch x classes
        official = (1. - alpha) * F.cross_entropy(s, labels) + alpha * (
            nn.KLDivLoss()(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1)) * (T * T) * mult)
    assert sum(kd_loss(s, t, labels, alpha, T, mult)).item() == pytest.approx(official.item(), rel=1e-6)


def test_reg_loss_against_hand_derived_values():
    # K = 2, label 0: p^d = [0.99, 0.01]; the "teacher" is softmax(p^d / T) (a softmax of probabilities),
    # the student is NOT softened: log_softmax(s), and there is no T^2
    s = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    labels = torch.tensor([0, 1])
    T, alpha, mult = 2.0, 0.1, 100.0
    q0 = softmax([0.99 / T, 0.01 / T])      # = [sigma(0.49), 1 - sigma(0.49)]
    assert q0[0] == pytest.approx(1 / (1 + math.exp(-0.98 / T)))
    q1 = list(reversed(q0))
    p = [softmax([0.0, 0.0]), softmax([1.0, -1.0])]
    kl = hand_kl_mean(p, [q0, q1])
    ce = -(math.log(p[0][0]) + math.log(p[1][1])) / 2
    ce_term, reg_term = reg_loss(s, labels, alpha, T, mult)
    assert ce_term.item() == pytest.approx((1 - alpha) * ce, rel=1e-6)
    assert reg_term.item() == pytest.approx(alpha * mult * kl, rel=1e-6)
    # K = 100: 0.99 on the label, 0.01 / 99 elsewhere
    q = manual_teacher(torch.tensor([3]), 100)
    assert q[0, 3].item() == pytest.approx(0.99) and q[0, 0].item() == pytest.approx(0.01 / 99)


def test_reg_loss_is_the_official_expression():
    """my_loss_function.py loss_kd_regularization, verbatim but for .cuda()."""
    g = torch.Generator().manual_seed(1)
    outputs = torch.randn(6, 100, generator=g)
    labels = torch.randint(0, 100, (6,), generator=g)
    alpha, T, mult, correct_prob = 0.95, 40.0, 1.0, 0.99
    K = outputs.size(1)
    teacher_soft = torch.ones_like(outputs)
    teacher_soft = teacher_soft * (1 - correct_prob) / (K - 1)
    for i in range(outputs.shape[0]):
        teacher_soft[i, labels[i]] = correct_prob
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        soft = nn.KLDivLoss()(F.log_softmax(outputs, dim=1), F.softmax(teacher_soft / T, dim=1)) * mult
    official = (1. - alpha) * F.cross_entropy(outputs, labels) + alpha * soft
    assert sum(reg_loss(outputs, labels, alpha, T, mult)).item() == pytest.approx(official.item(), rel=1e-6)


def test_label_smoothing_against_hand_derived_values():
    # logits [2, 0, 0, 0], label 0, eps 0.1: targets [0.9, 0.1/3, 0.1/3, 0.1/3]; with L = log(e^2 + 3),
    # log p = [2 - L, -L, -L, -L] and the loss is -(0.9 (2 - L) - 0.1 L) = L - 1.8
    s = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    assert label_smoothing_loss(s, torch.tensor([0])).item() == pytest.approx(math.log(math.e ** 2 + 3) - 1.8, rel=1e-6)
    # label 1: targets [0.1/3, 0.9, 0.1/3, 0.1/3]: -(0.1/3 (2 - L) - 0.9 L - 2 (0.1/3) L) = L - 0.2/3
    assert label_smoothing_loss(s, torch.tensor([1])).item() == pytest.approx(math.log(math.e ** 2 + 3) - 0.2 / 3, rel=1e-6)
    # not PyTorch's label_smoothing (0.1/K on every class, label included)
    assert label_smoothing_loss(s, torch.tensor([0])).item() != pytest.approx(
        F.cross_entropy(s, torch.tensor([0]), label_smoothing=0.1).item(), rel=1e-4)


def test_kl_mean_divides_by_batch_times_classes():
    log_p = F.log_softmax(torch.tensor([[0.0, 1.0, 2.0, 3.0]] * 2), dim=1)
    q = torch.full((2, 4), 0.25)
    assert kl_mean(log_p, q).item() == pytest.approx(F.kl_div(log_p, q, reduction="batchmean").item() / 4, rel=1e-6)


# ------------------------------------------------------------------------------------------------ method


def test_the_distiller_variants_sum_to_the_official_losses():
    torch.manual_seed(0)
    student = create_model("tfkd_shufflenetv2", num_classes=100)
    teacher = create_model("tfkd_shufflenetv2", num_classes=100)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    d = TfKD(student, teacher, variant="self", alpha=0.95, temperature=20.0, multiplier=1.0).eval()
    logits, losses = d(x, y, None)
    assert set(losses) == {"loss_ce", "loss_kd"}
    expected = kd_loss(logits, teacher(x), y, 0.95, 20.0, 1.0)
    assert sum(losses.values()).item() == pytest.approx(sum(expected).item(), rel=1e-5)
    for variant, names in (("baseline", {"loss_ce"}), ("reg", {"loss_ce", "loss_reg"}), ("lsr", {"loss_lsr"})):
        _, losses = TfKD(student, None, variant=variant, alpha=0.1, temperature=20.0, multiplier=100.0).eval()(x, y, None)
        assert set(losses) == names
    with pytest.raises(ValueError, match="needs a teacher"):
        TfKD(student, None, variant="self")
    with pytest.raises(ValueError, match="without a teacher"):
        TfKD(student, teacher, variant="reg")
    with pytest.raises(ValueError, match="no multiplier"):
        TfKD(student, teacher, variant="kd", multiplier=50.0)


# ------------------------------------------------------------------------------------------------ lr schedule


class _LRScheduler:
    """torch 1.2.0 (requirements.txt: torch==1.2.0) torch/optim/lr_scheduler.py, the parts main.py uses:
    with last_epoch=-1 the constructor records initial_lr, sets last_epoch = 0 and calls step(0)."""

    def __init__(self, optimizer, last_epoch=-1):
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
            last_epoch = 0
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step(last_epoch)

    def step(self, epoch=None):
        if epoch is None:
            epoch = self.last_epoch + 1
        self.last_epoch = epoch
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr


class MultiStepLR12(_LRScheduler):
    """torch 1.2.0 MultiStepLR (closed form; the chainable form came with 1.4)."""

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        self.milestones, self.gamma = milestones, gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base_lr * self.gamma ** bisect_right(self.milestones, self.last_epoch) for base_lr in self.base_lrs]


class WarmUpLR(_LRScheduler):
    """utils.py lines 256-271 of the official code, verbatim."""

    def __init__(self, optimizer, total_iters, last_epoch=-1):
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base_lr * self.last_epoch / (self.total_iters + 1e-8) for base_lr in self.base_lrs]


class _Optimizer:
    def __init__(self, lr):
        self.param_groups = [{"lr": lr}]


def official_lrs(lr: float, kd: bool, iters: int = 4, epochs: int = 200) -> list[list[float]]:
    """The lr of every iteration of every epoch, as main.py + train_kd.py drive the schedulers:
    main.py builds WarmUpLR(optimizer, len(train_dl) * 1) then train_*() builds MultiStepLR([60, 120, 160], 0.2);
    every 0-based epoch > 0 starts with scheduler.step() (train_and_evaluate_kd) or scheduler.step(epoch)
    (train_and_evaluate); in epoch 0 every iteration starts with warmup_scheduler.step()."""
    opt = _Optimizer(lr)
    warmup = WarmUpLR(opt, iters * 1)
    scheduler = MultiStepLR12(opt, milestones=[60, 120, 160], gamma=0.2)
    out = []
    for epoch in range(epochs):
        if epoch > 0:
            scheduler.step() if kd else scheduler.step(epoch)
        lrs = []
        for _ in range(iters):
            if epoch <= 0:
                warmup.step()
            lrs.append(opt.param_groups[0]["lr"])  # the lr of this iteration's optimizer.step()
        out.append(lrs)
    return out


@pytest.mark.parametrize("pair, kd", [("baseline-resnet18", False), ("self-resnet18", True),
                                      ("reg-googlenet", False), ("self-resnext29", True)])
def test_lr_schedule_epoch_by_epoch_against_the_official_schedulers(pair, kd):
    train = resolve("tfkd", get_paper("tfkd").spec, "paper", pair, 0).train
    official = official_lrs(train.lr, kd)
    assert len(official) == train.epochs == 200
    assert train.warmup_epochs == 1 and train.warmup_unit == "step"
    for epoch in range(1, 201):  # 1-based, iteration by iteration (the warm-up's 1e-8 aside)
        ours = [train.lr_at(epoch, i, 4) for i in range(4)]
        assert official[epoch - 1] == pytest.approx(ours, rel=1e-8), epoch
    # epoch 1 goes lr/N, 2 lr/N, ..., lr; the schedule after it is the `epoch > milestone` rule
    assert official[0] == pytest.approx([train.lr * i / 4 for i in range(1, 5)], rel=1e-6)
    assert train.lr_at(60) == pytest.approx(train.lr) and train.lr_at(61) == pytest.approx(0.2 * train.lr)
    assert train.lr_at(161) == pytest.approx(0.008 * train.lr) and train.lr_at(200) == pytest.approx(0.008 * train.lr)


def test_installed_torch_multisteplr_gives_the_same_schedule():
    """Cross-check of the replica above with the installed torch's schedulers (chainable since 1.4)."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=5e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warmup = type("WarmUpLR", (torch.optim.lr_scheduler.LRScheduler,), {
            "__init__": lambda self, o, n: (setattr(self, "total_iters", n), torch.optim.lr_scheduler.LRScheduler.__init__(self, o))[1],
            "get_lr": WarmUpLR.get_lr})(opt, 4)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[60, 120, 160], gamma=0.2)
        got = []
        for epoch in range(200):
            if epoch > 0:
                scheduler.step()
            for _ in range(4):
                if epoch <= 0:
                    warmup.step()
                opt.step()
            got.append(opt.param_groups[0]["lr"])
    replica = [lrs[-1] for lrs in official_lrs(0.1, kd=True)]
    assert got == pytest.approx(replica, rel=1e-6)


# ------------------------------------------------------------------------------------------------ configs

# (pair, variant, alpha, T, multiplier, batch) read from experiments/**/params.json @d000ab3
PARAMS_JSON = [
    ("baseline-resnet18", "baseline", None, None, None, 128),     # base_experiments/base_resnet18
    ("baseline-resnet50", "baseline", None, None, None, 64),      # base_experiments/base_resnet50
    ("baseline-resnext29", "baseline", None, None, None, 64),     # base_experiments/base_resnext29
    ("self-mobilenetv2", "self", 0.95, 20, 1.0, 128),             # mobilenet_distill/mobilenet_self_teacher
    ("self-resnet18", "self", 0.95, 6, 50.0, 128),                # resnet18_distill/resnet18_self_teacher
    ("self-googlenet", "self", 0.4, 20, 50.0, 64),                # googlenet_distill/googlenet_self_teacher
    ("self-densenet121", "self", 0.9, 20, 50.0, 100),             # densenet121_distill/densenet_self_teacher
    ("self-resnext29", "self", 0.9, 20, 100.0, 64),               # resnext29_distill/resnext29_self_teacher
    ("reg-mobilenetv2", "reg", 0.95, 40, 1.0, 128),               # base_mobilenetv2: reg_alpha, reg_temperature
    ("reg-shufflenetv2", "reg", 0.95, 10, 1.0, 128),              # base_shufflenetv2
    ("reg-resnet18", "reg", 0.1, 20, 100.0, 128),                 # base_resnet18
    ("reg-googlenet", "reg", 0.1, 40, 50.0, 64),                  # base_googlenet
    ("lsr-googlenet", "lsr", None, None, None, 64),               # base_googlenet (--label_smoothing)
    ("resnet18-mobilenetv2", "kd", 0.95, 20, None, 128),          # mobilenet_distill/resnet18_teacher
    ("resnet18-shufflenetv2", "kd", 0.95, 20, None, 128),         # shufflenet_distill/resnet18_teacher
    ("resnet50-resnet18", "kd", 0.6, 20, None, 64),               # resnet18_distill/resnet50_teacher
]


@pytest.mark.parametrize("pair, variant, alpha, T, multiplier, batch", PARAMS_JSON)
def test_resolved_configs_match_the_official_params_json(pair, variant, alpha, T, multiplier, batch):
    cfg = resolve("tfkd", get_paper("tfkd").spec, "paper", pair, 0)
    m = cfg.method
    assert m["variant"] == variant
    if alpha is not None:
        assert (m["alpha"], m["temperature"]) == (alpha, T)
    if multiplier is not None:
        assert m["multiplier"] == multiplier
    if variant == "kd":
        assert m.get("multiplier", 1.0) == 1.0  # loss_kd has no multiplier
    t = cfg.train
    assert t.batch_size == batch and t.lr == pytest.approx(0.1 * batch / 128)  # main.py: lr * batch / 128
    assert (t.epochs, t.momentum, t.weight_decay, t.milestones, t.gamma) == (200, 0.9, 5e-4, [60, 120, 160], 0.2)
    assert cfg.augment["mean"] == [0.5070751592371323, 0.48654887331495095, 0.4409178433670343]
    assert cfg.augment["std"] == [0.2673342858792401, 0.2564384629170883, 0.27615047132568404]
    assert cfg.teacher_source == ("run" if variant in ("self", "kd") else "none")


def test_the_self_chain_is_declared_by_teacher_from_the_best_baseline():
    paper = get_paper("tfkd")
    for preset, model, student in (("paper", "resnet18", "tfkd_resnet18"), ("smoke", "shufflenetv2", "tfkd_shufflenetv2")):
        cfg = resolve("tfkd", paper.spec, preset, f"self-{model}", 0)
        assert (cfg.teacher, cfg.student, cfg.teacher_source) == (student, student, "run")
        up = cfg.teacher_from
        assert up.pair == f"baseline-{model}" and up.checkpoint == "best"  # main.py: base_<model>/best.pth.tar
        assert up.config.teacher is None and up.config.method == {"variant": "baseline"}
        assert "best" in up.config.train.keep_checkpoints
    assert paper.default_pair("smoke") == "self-shufflenetv2"
    kd = resolve("tfkd", paper.spec, "paper", "resnet50-resnet18", 0)
    assert (kd.teacher, kd.student, kd.teacher_from.pair) == ("tfkd_resnet50", "tfkd_resnet18", "baseline-resnet50")
    for pair in paper.pairs("paper"):
        if pair.split("-")[0] in ("baseline", "reg", "lsr"):
            assert resolve("tfkd", paper.spec, "paper", pair, 0).teacher is None, pair


def test_every_reported_row_of_the_figures_is_a_target_and_claims_name_real_pairs():
    paper = get_paper("tfkd")
    targets = paper.targets("paper")
    official = [r for r in paper.reported if r.source.startswith("official README figure")]
    assert len(official) == 18 and set(targets.values()) == set(official)
    assert {targets[p].method for p in targets} == {"Tf-KD_self", "Tf-KD_reg", "KD", "LSR"}
    assert targets["self-resnet18"].pair == "tfkd_resnet18-tfkd_resnet18"
    assert targets["reg-resnet18"].method == "Tf-KD_reg" and targets["lsr-resnet18"].method == "LSR"
    assert targets["resnext29-googlenet"].pair == "tfkd_resnext29_8x64d-tfkd_googlenet"
    assert {(c.better[2], c.than[2], c.by) for c in paper.claims} >= {("self-resnet18", "baseline-resnet18", 1.0),
                                                                       ("reg-resnet18", "baseline-resnet18", 0.0)}


REFERENCE = Path("/work/shared/reference/reported_seed_papers.csv")


@pytest.mark.skipif(not REFERENCE.exists(), reason="the shared reference table is not on this machine")
def test_reported_csv_is_the_generated_copy_of_the_reference_rows(tmp_path):
    from reproductions.tfkd import make_reported
    out = tmp_path / "reported.csv"
    make_reported.main(REFERENCE, out)
    committed = Path(make_reported.__file__).with_name("reported.csv")
    assert out.read_bytes() == committed.read_bytes()
    with open(REFERENCE, newline="") as fh:
        reference = [r for r in csv.DictReader(fh) if r["paper_arxiv"] == "1909.11723"
                     or r["source"].startswith(make_reported.OFFICIAL)]
    with open(committed, newline="") as fh:
        ours = list(csv.DictReader(fh))
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        assert {k: v for k, v in a.items() if k not in ("teacher", "student")} == \
               {k: v for k, v in b.items() if k not in ("teacher", "student")}
