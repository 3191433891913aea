"""OFD: the BN margin and the partial L2 against hand-derived values, the stage weighting and scaling,
every official setting built and trained one step, and the recipe of the paper preset; the
PyramidNet zoo models in OFD's checkpoint layout."""
import json
import math

import pytest
import torch

from kdbench.cli import main
from kdbench.distiller import StepContext
from kdbench.evaluate import count_parameters
from kdbench.models import create_model
from reproductions.ofd.loss import bn_margin, partial_l2
from reproductions.ofd.method import OFD


def test_bn_margin_hand_values():
    got = bn_margin(torch.tensor([1.0, 2.0, -2.0, 1.0]), torch.tensor([0.0, 1.0, 1.0, 4.0]))
    phi, cdf = math.exp(-0.125) / math.sqrt(2 * math.pi), 0.5 * math.erfc(0.5 / math.sqrt(2))  # z = 0.5
    expected = [-1 / math.sqrt(2 * math.pi) / 0.5,  # m = 0: -s * phi(0) / Phi(0)
                1 - 2 * phi / cdf,  # s = 2, m = 1
                1 - 2 * phi / cdf,  # the sign of the BN weight does not matter (|s|)
                -3.0]  # Phi(-4) < 0.001: the official fallback -3|s|
    torch.testing.assert_close(got, torch.tensor(expected))


def test_partial_l2_masks_student_responses_below_a_negative_teacher():
    s = torch.tensor([-1.0, 0.5, -3.0, 2.0, -2.0]).view(1, 5, 1, 1)
    t = torch.tensor([-2.0, -1.0, 1.0, 3.0, -1.0]).view(1, 5, 1, 1)
    # t' = max(t, -1.5) = [-1.5, -1, 1, 3, -1]; the last element has s < t' < 0: not counted
    assert partial_l2(s, t, torch.tensor(-1.5)).item() == pytest.approx(0.25 + 2.25 + 16 + 1)


def test_stage_weighting_and_scaling():
    torch.manual_seed(0)
    m = OFD(create_model("resnet8"), create_model("resnet20"))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    m.eval()  # fixed BN so the manual value is the same computation
    _, losses = m(x, y, StepContext(epoch=1, epochs=1))
    s = m.student.forward_features(x).preact_feats[1:-1]
    t = m.teacher.forward_features(x).preact_feats[1:-1]
    manual = sum(partial_l2(c(a), b, mg) / w for c, a, b, mg, w in zip(m.connectors, s, t, m.margins(), (4, 2, 1)))
    assert losses["loss_ofd"].item() == pytest.approx(manual.item() / 4 / 1000, rel=1e-5)
    for bn, margin in zip(m.teacher.get_bn_before_relu(), m.margins()):
        torch.testing.assert_close(margin.flatten(), bn_margin(bn.weight, bn.bias))


@pytest.mark.parametrize("pair", ["wrn_28_4-wrn_16_4", "wrn_28_4-wrn_28_2", "wrn_28_4-wrn_16_2", "wrn_28_4-resnet56",
                                  "pyramidnet200-wrn_28_4", "pyramidnet200-pyramidnet110"])
def test_every_setting_builds_and_trains_a_step(pair):
    torch.manual_seed(0)
    t_name, s_name = pair.split("-")
    m = OFD(create_model(s_name), create_model(t_name))
    m.train()
    assert m.teacher.training  # official: t_net.train() every epoch
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,))
    logits, losses = m(x, y, StepContext(epoch=1, epochs=200))
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in m.connectors.parameters())
    assert all(p.grad is None for p in m.teacher.parameters())
    if t_name == "pyramidnet200":  # connectors map to the bottleneck's inner width, as get_channel_num
        assert [c[0].out_channels for c in m.connectors] == [100, 180, 1024]
    m.train()
    assert not OFD(create_model("resnet8"), create_model("resnet20"), teacher_bn="eval").train().teacher.training


def test_student_preact_batchnorms_move_twice_as_in_the_official_feature_call():
    m = OFD(create_model("pyramidnet110"), create_model("resnet20"))
    m.train()
    before = m.student.layer2[0].bn1.num_batches_tracked.item()
    m(torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,)), StepContext(epoch=1, epochs=1))
    assert m.student.layer2[0].bn1.num_batches_tracked.item() == before + 2
    assert m.student.layer1[0].bn1.num_batches_tracked.item() == 1


def test_pyramidnet_layout_of_the_official_checkpoints():
    # OFD README sizes: Pyramid-200 26.84M, Pyramid-110 3.91M; WRN 28-4 5.87M, 16-4 2.77M, 28-2 1.47M
    sizes = {"pyramidnet200": 26.84, "pyramidnet110": 3.91, "wrn_28_4": 5.87, "wrn_16_4": 2.77, "wrn_28_2": 1.47}
    for name, millions in sizes.items():
        assert math.floor(count_parameters(create_model(name)) / 1e4) / 100 == millions
    big, small = create_model("pyramidnet200").state_dict(), create_model("pyramidnet110").state_dict()
    # widths grow by alpha / (3n): 240/66 per bottleneck block (x4 out), 84/54 per basic block
    assert big["layer1.0.conv1.weight"].shape == (20, 16, 1, 1) and big["layer1.0.conv3.weight"].shape == (80, 20, 1, 1)
    assert big["layer2.0.bn1.weight"].shape == (384,) and big["fc.weight"].shape == (100, 1024)
    assert len({k.split(".")[1] for k in big if k.startswith("layer3.")}) == 22
    assert small["layer1.0.conv1.weight"].shape == (18, 16, 3, 3) and small["bn_final.weight"].shape == (100,)
    assert {k.split(".", 2)[2] for k in small if k.startswith("layer1.0.")} == {
        f"{bn}.{p}" for bn in ("bn1", "bn2", "bn3") for p in ("weight", "bias", "running_mean", "running_var",
                                                             "num_batches_tracked")} | {"conv1.weight", "conv2.weight"}
    model = create_model("pyramidnet200").eval()
    x = torch.randn(2, 3, 32, 32)
    out = model.forward_features(x)
    torch.testing.assert_close(out.logits, model(x))
    l2 = model.layer2[0]
    torch.testing.assert_close(out.preact_feats[1], l2.bn2(l2.conv1(l2.bn1(out.feats[1]))))


def test_paper_preset_recipe(capsys, sandbox):
    assert main(["reproduce", "ofd", "--pair", "all", "--dry-run"]) == 0
    cfgs = {c["pair"]: c for c in json.loads(capsys.readouterr().out)}
    assert len(cfgs) == 6
    for pair, c in cfgs.items():
        t = c["train"]
        assert (t["epochs"], t["lr"], t["milestones"], t["nesterov"], t["momentum_reset"]) == (200, 0.1, [100, 150], True, True)
        assert t["batch_size"] == (64 if pair.startswith("pyramidnet200") else 128)
        assert c["augment"]["padding_mode"] == "reflect" and c["statistic"] == "last"
        assert c["teacher_checkpoint"]["file"] == ("pyramid200_mixup_15.6.tar" if "pyramid" in pair.split("-")[0]
                                                   else "WRN28-4_21.09.pt")
