"""FSP: matrices and loss against hand values, the two-stage recipe."""
import pytest
import torch

from kdbench.distiller import StepContext
from kdbench.models import create_model
from reproductions.fsp.loss import fsp_losses, fsp_matrix
from reproductions.fsp.method import FSP


def test_fsp_matrix_hand_values():
    bottom = torch.tensor([[[[1.0, 2.0]], [[0.0, 1.0]]]])  # B=1, C=2, 1x2
    top = torch.tensor([[[[3.0, 5.0]]]])  # C=1
    g = fsp_matrix(bottom, top)
    assert g.shape == (1, 2, 1)
    assert g[0, 0, 0].item() == pytest.approx((1 * 3 + 2 * 5) / 2)
    assert g[0, 1, 0].item() == pytest.approx((0 * 3 + 1 * 5) / 2)


def test_fsp_pools_the_larger_map():
    bottom = torch.ones(1, 1, 4, 4) * 2.0
    top = torch.ones(1, 1, 2, 2) * 3.0
    assert fsp_matrix(bottom, top).item() == pytest.approx(6.0)


def test_fsp_losses_per_consecutive_pair():
    s = [torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), 3.0), torch.full((1, 1, 1, 1), 1.0)]
    t = [torch.full((1, 1, 1, 1), 1.0)] * 3
    losses = fsp_losses(s, t)  # G_s = 6, 3 ; G_t = 1, 1
    assert [l.item() for l in losses] == pytest.approx([25.0, 4.0])


def test_two_stages():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    student, teacher = create_model("resnet8"), create_model("resnet20")
    m = FSP(student, teacher)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,))
    _, init = m(x, y, StepContext(epoch=1, epochs=30, stage="init"))
    assert set(init) == {"loss_fsp"}
    init["loss_fsp"].backward()
    assert student.conv1.weight.grad is not None and student.fc.weight.grad is None
    init_params = {id(p) for p in m.trainable_parameters("init")}
    assert id(student.fc.weight) not in init_params and id(student.conv1.weight) in init_params
    _, main = m(x, y, StepContext(epoch=1, epochs=240))
    assert set(main) == {"loss_ce"}
    with pytest.raises(ValueError, match="equal channel counts"):
        FSP(create_model("wrn_40_1"), create_model("wrn_40_2"))
