"""FT: factor and loss against hand values, the two stages and what each trains."""
import pytest
import torch

from kdbench.distiller import StepContext, add_kd
from kdbench.models import create_model
from reproductions.ft.loss import Paraphraser, factor, factor_transfer_loss
from reproductions.ft.method import FT


def test_factor_hand_value():
    f = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])  # B=1, C=2, 1x2: channel-mean of squares = [1, 2]
    expected = torch.tensor([[1.0, 2.0]]) / 5 ** 0.5
    torch.testing.assert_close(factor(f), expected)


def test_factor_transfer_loss_hand_value():
    a = torch.tensor([[[[1.0, 0.0]]]])  # factor [1, 0]
    b = torch.tensor([[[[0.0, 1.0]]]])  # factor [0, 1]
    assert factor_transfer_loss(a, b).item() == pytest.approx(1.0)  # mean(|1|, |-1|)
    assert factor_transfer_loss(a, a).item() == pytest.approx(0.0)


def test_paraphraser_shapes():
    p = Paraphraser(64)
    code, rec = p(torch.randn(2, 64, 8, 8))
    assert code.shape == (2, 32, 8, 8) and rec.shape == (2, 64, 8, 8)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in p.modules())


def test_two_stages_train_the_right_parts():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    student, teacher = create_model("resnet8"), create_model("resnet20")
    m = add_kd(FT(student, teacher), weight=1.0, temperature=4.0)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,))
    bn_before = student.bn1.running_mean.clone()
    logits, init = m(x, y, StepContext(epoch=1, epochs=30, stage="init"))
    assert logits is None and set(init) == {"loss_rec"}
    torch.testing.assert_close(student.bn1.running_mean, bn_before)  # the student did not run
    init["loss_rec"].backward()
    assert m.paraphraser.encoder[0].weight.grad is not None
    assert {id(p) for p in m.trainable_parameters("init")} == {id(p) for p in m.paraphraser.parameters()}
    m.zero_grad()
    _, main = m(x, y, StepContext(epoch=1, epochs=240))
    assert set(main) == {"loss_ce", "loss_ft", "loss_kd_plus"}
    sum(main.values()).backward()
    assert m.translator.encoder[0].weight.grad is not None
    assert all(p.grad is None for p in m.paraphraser.parameters())
    main_ids = {id(p) for p in m.trainable_parameters("main")}
    assert not main_ids & {id(p) for p in m.paraphraser.parameters()}
