"""DIST loss against hand-derived correlations, and its scaling."""
import pytest
import torch

from kdbench.distiller import StepContext
from reproductions.dist.loss import dist_loss, inter_class_relation, intra_class_relation
from reproductions.dist.method import DIST


def test_inter_class_relation_hand_values():
    a = torch.tensor([[1.0, 2.0, 3.0]])
    assert inter_class_relation(a, torch.tensor([[3.0, 2.0, 1.0]])).item() == pytest.approx(2.0, abs=1e-6)
    assert inter_class_relation(a, torch.tensor([[2.0, 4.0, 6.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_intra_class_relation_correlates_across_the_batch():
    a = torch.tensor([[1.0], [2.0], [3.0]])  # 3 samples, 1 class
    b = torch.tensor([[1.0], [3.0], [2.0]])  # centred [-1,0,1] . [-1,1,0] = 1; norms sqrt2*sqrt2 = 2
    assert intra_class_relation(a, b).item() == pytest.approx(0.5, abs=1e-6)


def test_dist_scaling_and_weights():
    torch.manual_seed(0)
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    tau = 2.0
    ys, yt = (s / tau).softmax(1), (t / tau).softmax(1)
    inter, intra = inter_class_relation(ys, yt), intra_class_relation(ys, yt)
    assert dist_loss(s, t, beta=1.0, gamma=0.0, tau=tau).item() == pytest.approx(4 * inter.item(), rel=1e-5)
    assert dist_loss(s, t, beta=2.0, gamma=3.0, tau=tau).item() == pytest.approx(
        4 * (2 * inter.item() + 3 * intra.item()), rel=1e-5)
    assert dist_loss(s, s, tau=4.0).item() == pytest.approx(0.0, abs=1e-3)  # 1e-8 in the denominator


def test_method_terms_and_gradients():
    torch.manual_seed(1)
    student, teacher = torch.nn.Linear(8, 5), torch.nn.Linear(8, 5)
    m = DIST(student, teacher)
    x, y = torch.randn(4, 8), torch.randint(0, 5, (4,))
    logits, losses = m(x, y, StepContext(epoch=1, epochs=1))
    assert set(losses) == {"loss_ce", "loss_kd"}
    torch.testing.assert_close(losses["loss_kd"], 2.0 * dist_loss(logits, teacher(x).detach(), 1.0, 1.0, 4.0))
    sum(losses.values()).backward()
    assert torch.isfinite(student.weight.grad).all() and teacher.weight.grad is None
