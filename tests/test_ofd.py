"""OFD: the BN margin and the partial L2 against hand-derived values, the stage weighting and scaling,
every official setting built and trained one step, the teacher left in train mode during training, and
the recipe of the paper preset. The zoo models of OFD's settings are tested in tests/test_pyramidnet.py."""
import json
import math

import pytest
import torch

from kdbench.cli import main
from kdbench.config import TrainConfig, resolve
from kdbench.distiller import StepContext
from kdbench.models import create_model
from kdbench.registry import get_paper
from kdbench.train import fit
from reproductions.ofd.loss import bn_margin, ofd_feature_loss, partial_l2, stage_weights
from reproductions.ofd.method import OFD

from test_train import loaders

PAPER_PAIRS = ["wrn_28_4-wrn_16_4", "wrn_28_4-wrn_28_2", "wrn_28_4-wrn_16_2", "wrn_28_4-resnet56",
               "pyramidnet200-wrn_28_4", "pyramidnet200-pyramidnet110"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread_module):
    """These tests run on one torch thread (restored after the module)."""


# --------------------------------------------------------------------------- loss

def test_bn_margin_hand_values():
    got = bn_margin(torch.tensor([1.0, 2.0, -2.0, 1.0]), torch.tensor([0.0, 1.0, 1.0, 4.0]))
    phi, cdf = math.exp(-0.125) / math.sqrt(2 * math.pi), 0.5 * math.erfc(0.5 / math.sqrt(2))  # z = 0.5
    expected = [-1 / math.sqrt(2 * math.pi) / 0.5,  # m = 0: -s * phi(0) / Phi(0) = -sqrt(2 / pi)
                1 - 2 * phi / cdf,  # s = 2, m = 1
                1 - 2 * phi / cdf,  # the sign of the BN weight does not matter (|s|)
                -3.0]  # Phi(-4) < 0.001: the official fallback -3|s|
    torch.testing.assert_close(got, torch.tensor(expected))


def test_bn_margin_is_the_mean_of_the_negative_responses():
    """E[x | x < 0] for x ~ N(m, s^2), by quadrature; the fallback exactly where Phi(-m/s) <= 0.001
    (m/s > 3.0902): at m/s = 3.0 the formula, at 3.2 the fallback."""
    s = torch.tensor([0.5, 1.0, 1.5, 2.0, 0.1, 1.0, 1.0], dtype=torch.float64)
    m = torch.tensor([-1.0, 0.3, 2.0, -0.5, 0.05, 3.0, 3.2], dtype=torch.float64)
    got = bn_margin(s, m).double()
    for i in range(6):
        x = torch.linspace(float(m[i] - 14 * s[i]), 0.0, 400_001, dtype=torch.float64)
        density = torch.exp(-0.5 * ((x - m[i]) / s[i]) ** 2)
        expected = torch.trapezoid(x * density, x) / torch.trapezoid(density, x)
        assert got[i].item() == pytest.approx(expected.item(), rel=1e-5), i
    assert got[6].item() == pytest.approx(-3.0)
    assert (got[:6] < 0).all() and (got[:6] > -3 * s[:6] - 1).all()


def test_partial_l2_masks_student_responses_below_a_negative_teacher():
    s = torch.tensor([-1.0, 0.5, -3.0, 2.0, -2.0, -1.5]).view(1, 6, 1, 1).requires_grad_()
    t = torch.tensor([-2.0, -1.0, 1.0, 3.0, -1.0, -4.0]).view(1, 6, 1, 1).requires_grad_()
    # t' = max(t, -1.5) = [-1.5, -1, 1, 3, -1, -1.5]
    # counted: s > t' (-1 > -1.5, 0.5 > -1) or t' > 0 (1, 3); not counted: s = -2 < t' = -1 < 0 and
    # s = t' = -1.5 (neither s > t' nor t' > 0)
    loss = partial_l2(s, t, torch.tensor(-1.5))
    assert loss.item() == pytest.approx(0.25 + 2.25 + 16 + 1)
    loss.backward()
    torch.testing.assert_close(s.grad.flatten(), torch.tensor([1.0, 3.0, -8.0, -2.0, 0.0, 0.0]))
    assert t.grad is None  # the teacher feature is a constant target


def test_partial_l2_uses_a_per_channel_margin():
    s = torch.full((2, 2, 2, 2), -5.0)
    t = torch.full((2, 2, 2, 2), -10.0)
    margin = torch.tensor([-4.0, -6.0]).view(1, 2, 1, 1)
    # channel 0: t' = -4 > s = -5 and t' < 0 -> not counted; channel 1: t' = -6 < s -> (1)^2 x 8 elements
    assert partial_l2(s, t, margin).item() == pytest.approx(8.0)


def test_stage_weights_and_scaling():
    assert stage_weights(3) == [0.25, 0.5, 1.0] and stage_weights(4) == [0.125, 0.25, 0.5, 1.0]
    # target 0 (above any negative margin): each stage counts sum(s^2) where s > 0
    sources = [torch.full((2, 4, 8, 8), 1.0), torch.full((2, 8, 4, 4), 2.0), torch.full((2, 16, 2, 2), 3.0)]
    targets = [torch.zeros_like(x) for x in sources]
    margins = [torch.full((1, x.shape[1], 1, 1), -0.5) for x in sources]
    per_stage = [2 * 4 * 64 * 1.0, 2 * 8 * 16 * 4.0, 2 * 16 * 4 * 9.0]
    assert ofd_feature_loss(sources, targets, margins).item() == pytest.approx(
        per_stage[0] / 4 + per_stage[1] / 2 + per_stage[2])
    with pytest.raises(ValueError):
        ofd_feature_loss(sources, targets[:2], margins)


def test_method_loss_is_the_official_sum_over_batch_over_1000():
    torch.manual_seed(0)
    m = OFD(create_model("resnet8"), create_model("resnet20"))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    m.eval()  # fixed BN so that the manual value is the same computation
    _, losses = m(x, y, StepContext(epoch=1, epochs=1))
    s = m.student.forward_features(x).preact_feats[1:-1]
    t = m.teacher.forward_features(x).preact_feats[1:-1]
    manual = sum(partial_l2(c(a), b, mg) / w for c, a, b, mg, w in zip(m.connectors, s, t, m.margins(), (4, 2, 1)))
    assert losses["loss_ofd"].item() == pytest.approx(manual.item() / 4 / 1000, rel=1e-5)
    torch.testing.assert_close(losses["loss_ce"], torch.nn.functional.cross_entropy(m.student(x), y))
    for bn, margin in zip(m.teacher.get_bn_before_relu(), m.margins()):
        torch.testing.assert_close(margin.flatten(), bn_margin(bn.weight, bn.bias))


def test_connector_is_the_official_one():
    torch.manual_seed(0)
    m = OFD(create_model("wrn_16_2"), create_model("wrn_28_4"))
    for conn, (c_s, c_t) in zip(m.connectors, ((32, 64), (64, 128), (128, 256))):
        conv, bn = conn
        assert conv.weight.shape == (c_t, c_s, 1, 1) and conv.bias is None
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / c_t), rel=0.1)
        assert torch.equal(bn.weight, torch.ones(c_t)) and torch.equal(bn.bias, torch.zeros(c_t))
    assert m.num_extra_parameters() == sum(p.numel() for p in m.connectors.parameters())


# --------------------------------------------------------------------------- method on the official settings

@pytest.mark.parametrize("pair", PAPER_PAIRS)
def test_every_setting_builds_and_trains_a_step(pair):
    torch.manual_seed(0)
    t_name, s_name = pair.split("-")
    m = OFD(create_model(s_name), create_model(t_name))
    m.train()
    assert m.teacher.training  # official: t_net.train() every epoch
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,))
    logits, losses = m(x, y, StepContext(epoch=1, epochs=200))
    assert logits.shape == (2, 100) and set(losses) == {"loss_ce", "loss_ofd"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in m.connectors.parameters())
    assert all(p.grad is not None for p in m.student.parameters())
    assert all(p.grad is None for p in m.teacher.parameters())
    if t_name == "pyramidnet200":  # connectors map to the bottleneck's inner width, as get_channel_num
        assert [c[0].out_channels for c in m.connectors] == [100, 180, 1024]
    else:
        assert [c[0].out_channels for c in m.connectors] == [64, 128, 256]


def test_teacher_stays_in_train_mode_during_training(tmp_path):
    """Through the trainer: the teacher runs every training step in train mode (BatchNorm on batch
    statistics, running statistics moving as in the official code), its weights never change, the
    connectors are optimised with the student; teacher_bn=eval gives the usual frozen teacher."""
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.1, weight_decay=5e-4, nesterov=True)
    for mode in ("batch", "eval"):
        torch.manual_seed(0)
        m = OFD(create_model("resnet8", num_classes=10), create_model("resnet20", num_classes=10), teacher_bn=mode)
        seen = []
        bn = m.teacher.get_bn_before_relu()[0]
        bn.register_forward_pre_hook(lambda mod, args, seen=seen: seen.append(mod.training))
        weights = {k: v.clone() for k, v in m.teacher.named_parameters()}
        running = bn.running_mean.clone()
        connector = m.connectors[0][0].weight.detach().clone()
        fit(m, *loaders(), cfg, run_dir=tmp_path / mode, progress=False, log=lambda msg: None)
        assert len(seen) == 3 and all(t == (mode == "batch") for t in seen)
        assert all(torch.equal(v, m.teacher.state_dict()[k]) for k, v in weights.items())
        assert torch.equal(bn.running_mean, running) == (mode == "eval")
        assert not torch.equal(m.connectors[0][0].weight, connector)
    assert OFD.teacher_bn == "batch"
    with pytest.raises(ValueError, match="teacher_bn"):
        OFD(create_model("resnet8"), create_model("resnet20"), teacher_bn="frozen")


def test_student_preact_batchnorms_move_twice_as_in_the_official_feature_call():
    m = OFD(create_model("pyramidnet110"), create_model("resnet20"))
    m.train()
    before = m.student.layer2[0].bn1.num_batches_tracked.item()
    m(torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,)), StepContext(epoch=1, epochs=1))
    assert m.student.layer2[0].bn1.num_batches_tracked.item() == before + 2
    assert m.student.layer1[0].bn1.num_batches_tracked.item() == 1
    r = OFD(create_model("resnet56"), create_model("resnet20")).train()  # OFD's ResNet recomputes nothing
    r(torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,)), StepContext(epoch=1, epochs=1))
    assert all(b.num_batches_tracked.item() == 1 for b in r.student.modules() if isinstance(b, torch.nn.BatchNorm2d))


def test_other_zoo_pairs_and_a_clear_error_where_the_maps_differ_in_size():
    torch.manual_seed(0)
    for t_name, s_name in (("wrn_40_2", "wrn_16_2"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8")):
        m = OFD(create_model(s_name), create_model(t_name)).train()
        _, losses = m(torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,)), StepContext(epoch=1, epochs=1))
        assert torch.isfinite(losses["loss_ofd"])
    with pytest.raises(ValueError, match="spatial size"):
        OFD(create_model("ShuffleV1"), create_model("resnet32x4"))
    with pytest.raises(NotImplementedError):
        OFD(create_model("resnet8"), create_model("ShuffleV2"))  # no BN before ReLU to take margins from


# --------------------------------------------------------------------------- presets

def test_paper_preset_recipe(capsys, sandbox):
    assert main(["reproduce", "ofd", "--pair", "all", "--dry-run"]) == 0
    cfgs = {c["pair"]: c for c in json.loads(capsys.readouterr().out)}
    assert list(cfgs) == PAPER_PAIRS
    mean, std = [125.3 / 255, 123.0 / 255, 113.9 / 255], [63.0 / 255, 62.1 / 255, 66.7 / 255]
    for pair, c in cfgs.items():
        t = c["train"]
        assert (t["epochs"], t["lr"], t["momentum"], t["weight_decay"]) == (200, 0.1, 0.9, 5e-4)
        assert (t["milestones"], t["gamma"], t["nesterov"], t["momentum_reset"]) == ([100, 150], 0.1, True, True)
        assert t["batch_size"] == (64 if pair.startswith("pyramidnet200") else 128)
        assert c["augment"] == {"mean": pytest.approx(mean), "std": pytest.approx(std), "padding_mode": "reflect"}
        assert c["statistic"] == "last" and c["teacher_source"] == "published" and c["dataset"] == "cifar100"
        assert c["method"] == {"ce_weight": 1.0, "ofd_weight": 0.001, "teacher_bn": "batch"}
        ckpt = c["teacher_checkpoint"]
        if pair.startswith("pyramidnet200"):
            assert (ckpt["file"], ckpt["state_key"], ckpt["strip_prefix"]) == ("pyramid200_mixup_15.6.tar", "state_dict",
                                                                               "module.")
            assert "1_QgG81fNM3OvVIbMAxDPykKWuSIyKnmz" in ckpt["url"]
        else:
            assert (ckpt["file"], ckpt["state_key"]) == ("WRN28-4_21.09.pt", "model")
            assert "1Quxgs5teXVXwD3jBdkk-WeNLNpxbiZXN" in ckpt["url"]
    assert main(["reproduce", "ofd", "--preset", "smoke", "--dry-run"]) == 0
    smoke = json.loads(capsys.readouterr().out)[0]
    assert smoke["pair"] == "resnet20-resnet8" and smoke["dataset"] == "synthetic-cifar100"
    assert smoke["train"]["nesterov"] and smoke["train"]["momentum_reset"] and smoke["augment"]["padding_mode"] == "reflect"


def test_schedule_is_the_official_optimizer_rebuild():
    """The official loop builds a new SGD (lr, lr/10, lr/100) at 0-based epochs 0, 100, 150."""
    cfg = resolve("ofd", get_paper("ofd").spec, "paper", "wrn_28_4-wrn_16_4", 0).train
    for epoch in range(1, 201):  # kdbench epochs are 1-based
        official = 0.1 if epoch - 1 < 100 else 0.01 if epoch - 1 < 150 else 0.001
        assert cfg.lr_at(epoch) == pytest.approx(official)
    assert [e for e in range(2, 201) if e - 1 in cfg.milestones] == [101, 151]  # where momentum restarts


def test_reported_targets_are_the_six_settings():
    targets = get_paper("ofd").targets("paper")
    assert list(targets) == PAPER_PAIRS
    # README error rates converted to accuracy
    assert targets["wrn_28_4-wrn_16_4"].top1 == pytest.approx(100 - 20.89)
    assert targets["pyramidnet200-pyramidnet110"].top1 == pytest.approx(100 - 18.89)
    assert targets["wrn_28_4-resnet56"].student_top1 == pytest.approx(100 - 27.68)
