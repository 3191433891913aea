"""KD and DKD losses against hand-derived values, gradients and the paper's decomposition."""
import math

import pytest
import torch

from reproductions.dkd.loss import dkd_loss, tckd_nckd
from reproductions.kd.loss import kd_loss


def test_kd_loss_hand_value_t1():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # teacher p = [0.75, 0.25], student uniform
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(s, t, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_temperature_squared_and_batch_mean():
    s = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    t = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]])  # second sample: identical logits, KL = 0
    T = 2.0
    pt = [math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1)]
    kl = sum(p * math.log(p / 0.5) for p in pt)
    # summed over classes, averaged over the batch of 2, times T^2
    assert kd_loss(s, t, T).item() == pytest.approx(kl * T * T / 2, rel=1e-6)


def test_kd_loss_gradient_is_t_times_prob_difference():
    torch.manual_seed(0)
    s = torch.randn(4, 10, requires_grad=True)
    t = torch.randn(4, 10)
    T = 4.0
    kd_loss(s, t, T).backward()
    expected = T * (torch.softmax(s.detach() / T, 1) - torch.softmax(t / T, 1)) / 4
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-7)


def test_dkd_hand_values():
    target = torch.tensor([0])
    s = torch.zeros(1, 3)  # student uniform
    t = torch.tensor([[0.0, math.log(3.0), 0.0]])  # teacher p = [0.2, 0.6, 0.2]
    tckd, nckd = tckd_nckd(s, t, target, 1.0)
    # binary: teacher [0.2, 0.8] vs student [1/3, 2/3]; non-target: teacher [0.75, 0.25] vs [0.5, 0.5]
    assert tckd.item() == pytest.approx(0.2 * math.log(0.2 * 3) + 0.8 * math.log(0.8 * 1.5), rel=1e-5)
    assert nckd.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-5)
    assert dkd_loss(s, t, target, alpha=1.0, beta=8.0, temperature=1.0).item() == pytest.approx(
        tckd.item() + 8.0 * nckd.item(), rel=1e-6)


def test_dkd_target_split_uses_the_label_not_the_argmax():
    s = torch.zeros(1, 3)
    t = torch.tensor([[math.log(2.0), 0.0, 0.0]])  # p_t = [0.5, 0.25, 0.25]
    _, nckd_label0 = tckd_nckd(s, t, torch.tensor([0]), 1.0)
    _, nckd_label1 = tckd_nckd(s, t, torch.tensor([1]), 1.0)
    assert nckd_label0.item() == pytest.approx(0.0, abs=1e-7)  # others [0.5, 0.5] vs [0.5, 0.5]
    assert nckd_label1.item() == pytest.approx(2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3), rel=1e-5)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_reconstructs_kd(T):
    """The paper's Eq. (7): KD = TCKD + (1 - p_target^teacher) * NCKD (per sample, same T^2)."""
    torch.manual_seed(1)
    for _ in range(5):
        s, t = torch.randn(1, 100) * 3, torch.randn(1, 100) * 3
        target = torch.randint(0, 100, (1,))
        tckd, nckd = tckd_nckd(s, t, target, T)
        p_gt = torch.softmax(t / T, 1)[0, target].item()
        assert kd_loss(s, t, T).item() == pytest.approx(tckd.item() + (1 - p_gt) * nckd.item(), rel=1e-4, abs=1e-6)


def test_dkd_gradient_flows_to_student_only_and_is_finite():
    torch.manual_seed(2)
    s = torch.randn(8, 100, requires_grad=True)
    t = torch.randn(8, 100, requires_grad=True)
    dkd_loss(s, t.detach(), torch.randint(0, 100, (8,)), 1.0, 8.0, 4.0).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_dkd_warmup_ramp_scales_the_kd_term():
    from kdbench.distiller import StepContext
    from reproductions.dkd.method import DKD
    torch.manual_seed(3)
    student, teacher = torch.nn.Linear(12, 5), torch.nn.Linear(12, 5)
    x, y = torch.randn(6, 12), torch.randint(0, 5, (6,))
    method = DKD(student, teacher, warmup=20)
    full = dkd_loss(student(x), teacher(x), y, 1.0, 8.0, 4.0)
    for epoch, scale in ((1, 1 / 20), (10, 0.5), (20, 1.0), (200, 1.0)):
        _, losses = method(x, y, StepContext(epoch=epoch, epochs=240))
        assert losses["loss_kd"].item() == pytest.approx(scale * full.item(), rel=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters())
