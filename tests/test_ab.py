"""AB: the activation-boundary loss against hand values, regressors, the two stages, the WRN quirk."""
import pytest
import torch

from kdbench.distiller import StepContext
from kdbench.models import create_model
from kdbench.connectors import ConvReg
from reproductions.ab.loss import ab_losses, alternative_l2
from reproductions.ab.method import AB


def test_alternative_l2_hand_values():
    source = torch.tensor([0.5, -2.0, 0.2, 3.0])
    target = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    # teacher off: 0.5 > -1 -> (0.5+1)^2 = 2.25 ; -2 <= -1 -> 0 ; teacher on: 0.2 <= 1 -> (0.2-1)^2 = 0.64 ; 3 > 1 -> 0
    assert alternative_l2(source, target).item() == pytest.approx(2.25 + 0.64)


def test_layer_weights_and_scaling():
    s = [torch.full((2, 1), 0.0), torch.full((2, 1), 0.0)]
    t = [torch.full((2, 1), -1.0), torch.full((2, 1), -1.0)]  # each element contributes (0+1)^2 = 1
    losses = ab_losses(s, t)  # per layer: sum 2 / batch 2 = 1, times 3/1000, weights 2^-1 and 2^0
    assert [l.item() for l in losses] == pytest.approx([0.5 * 3e-3, 1.0 * 3e-3])


@pytest.mark.parametrize("s_shape, t_shape", [((16, 32, 32), (32, 16, 16)), ((16, 8, 8), (32, 16, 16)),
                                              ((16, 10, 10), (32, 8, 8))])
def test_convreg_maps_to_the_teacher_shape(s_shape, t_shape):
    out = ConvReg(s_shape, t_shape, use_relu=False)(torch.randn(2, *s_shape))
    assert out.shape == (2, *t_shape)


def test_two_stages_and_wrn_double_bn_update():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    student, teacher = create_model("wrn_16_2"), create_model("wrn_40_2")
    m = AB(student, teacher)
    assert all(isinstance(c, torch.nn.Identity) for c in m.connector)  # same widths and sizes
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,))
    bn = student.get_bn_before_relu()[0]
    before = int(bn.num_batches_tracked)
    _, init = m(x, y, StepContext(epoch=1, epochs=30, stage="init"))
    assert set(init) == {"loss_ab"} and int(bn.num_batches_tracked) == before + 2
    init["loss_ab"].backward()
    ids = {id(p) for p in m.trainable_parameters("init")}
    assert id(student.fc.weight) not in ids and id(student.conv1.weight) in ids
    _, main = m(x, y, StepContext(epoch=1, epochs=240))
    assert set(main) == {"loss_ce"}
    m2 = AB(create_model("resnet8"), create_model("resnet32x4"))
    assert sum(p.numel() for p in m2.connector.parameters()) > 0
