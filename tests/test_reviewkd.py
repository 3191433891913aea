"""ReviewKD: the HCL loss against hand-derived values, the ABF review path sized as the official
table, the 0-based warm-up, the teacher's train-mode BN, and the per-pair recipe."""
import json

import pytest
import torch

from kdbench.cli import main
from kdbench.distiller import StepContext
from kdbench.models import create_model
from reproductions.reviewkd.loss import hcl, hcl_level
from reproductions.reviewkd.method import ABF, ReviewKD


def test_hcl_level_hand_values():
    zero4 = torch.zeros(1, 1, 4, 4)
    checker = (torch.arange(4).view(4, 1) + torch.arange(4)) % 2 * 2.0 - 1  # +-1: every 2x2 pool is 0
    checker = checker.view(1, 1, 4, 4)
    # full mse 1; the 2x2 and 1x1 levels (weights 1/2, 1/4) are 0; 4x4 is skipped as 4 >= H
    assert hcl_level(checker, zero4).item() == pytest.approx(1 / 1.75)
    half = torch.zeros(1, 1, 4, 4)
    half[..., :2] = 1.0  # full mse 0.5; 2x2 pool [[1,0],[1,0]] mse 0.5; 1x1 pool 0.5, mse 0.25
    assert hcl_level(half, zero4).item() == pytest.approx((0.5 + 0.5 * 0.5 + 0.25 * 0.25) / 1.75)
    checker8 = checker.repeat(1, 1, 2, 2)  # 8x8: levels 4, 2, 1 all pool to 0
    assert hcl_level(checker8, torch.zeros(1, 1, 8, 8)).item() == pytest.approx(1 / 1.875)
    point = torch.full((2, 3, 1, 1), 2.0)  # a 1x1 map: the plain mse only
    assert hcl_level(point, torch.zeros(2, 3, 1, 1)).item() == pytest.approx(4.0)
    assert hcl([point, half], [torch.zeros(2, 3, 1, 1), zero4]).item() == pytest.approx(4.0 + 0.8125 / 1.75)
    with pytest.raises(ValueError):
        hcl([point], [])


# The official build_review_kd table (model/reviewkd.py), per student/teacher:
# in_channels (student, shallow->deep), out_channels (teacher), student sizes, teacher sizes.
OFFICIAL = {
    "resnet56-resnet20": ([16, 32, 64, 64], [16, 32, 64, 64], [32, 16, 8, 1], [32, 16, 8, 1]),
    "resnet110-resnet32": ([16, 32, 64, 64], [16, 32, 64, 64], [32, 16, 8, 1], [32, 16, 8, 1]),
    "resnet32x4-resnet8x4": ([64, 128, 256, 256], [64, 128, 256, 256], [32, 16, 8, 1], [32, 16, 8, 1]),
    "wrn_40_2-wrn_16_2": ([32, 64, 128, 128], [32, 64, 128, 128], [32, 16, 8, 1], [32, 16, 8, 1]),
    "wrn_40_2-wrn_40_1": ([16, 32, 64, 64], [32, 64, 128, 128], [32, 16, 8, 1], [32, 16, 8, 1]),
    "wrn_40_2-shufflev1": ([240, 480, 960, 960], [32, 64, 128, 128], [16, 8, 4, 1], [32, 16, 8, 1]),
    "resnet32x4-shufflev1": ([240, 480, 960, 960], [64, 128, 256, 256], [16, 8, 4, 1], [32, 16, 8, 1]),
    "resnet32x4-shufflev2": ([116, 232, 464, 1024], [64, 128, 256, 256], [16, 8, 4, 1], [32, 16, 8, 1]),
    "vgg13-vgg8": ([128, 256, 512, 512, 512], [128, 256, 512, 512, 512], [16, 8, 4, 4, 1], [16, 8, 4, 4, 1]),
    "resnet50-mobilenetv2": ([12, 16, 48, 160, 1280], [256, 512, 1024, 2048, 2048], [16, 8, 4, 2, 1],
                             [32, 16, 8, 4, 1]),
}


@pytest.mark.parametrize("pair", sorted(OFFICIAL))
def test_review_path_matches_the_official_table_and_trains(pair):
    torch.manual_seed(0)
    t_name, s_name = pair.split("-")
    student, teacher = create_model(s_name), create_model(t_name)
    m = ReviewKD(student, teacher, review_weight=5.0)
    c_in, c_out, s_sizes, t_sizes = OFFICIAL[pair]
    assert [a.conv1[0].in_channels for a in m.abfs] == c_in
    assert [a.conv2[0].out_channels for a in m.abfs] == c_out
    assert {a.conv1[0].out_channels for a in m.abfs} == {min(512, c_in[-1])}
    assert m.out_sizes == t_sizes
    assert [a.att_conv is None for a in m.abfs] == [False] * (len(c_in) - 1) + [True]
    m.train()
    assert m.teacher.training  # the official code never puts the teacher in eval mode
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,))
    fused = m.review(m.student.forward_features(x).feats)
    assert [f.shape[1] for f in fused] == c_out and [f.shape[-1] for f in fused] == t_sizes
    before = {k: v.clone() for k, v in m.teacher.named_parameters()}
    logits, losses = m(x, y, StepContext(epoch=30, epochs=240))
    assert set(losses) == {"loss_ce", "loss_review"} and logits.shape == (2, 100)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in m.abfs.parameters())
    assert all(p.grad is None for p in m.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in m.teacher.named_parameters())
    assert len(s_sizes) == len(m.abfs)


def test_warmup_is_zero_in_the_first_epoch_and_full_from_epoch_21():
    m = ReviewKD(create_model("resnet8"), create_model("resnet20"), review_weight=2.0)
    assert [m.warmup_factor(e) for e in (1, 11, 21, 240)] == [0.0, 0.5, 1.0, 1.0]
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    _, first = m(x, y, StepContext(epoch=1, epochs=240))
    assert first["loss_review"].item() == 0.0
    m.eval()  # fixed BN so the two terms are comparable
    _, mid = m(x, y, StepContext(epoch=11, epochs=240))
    _, full = m(x, y, StepContext(epoch=21, epochs=240))
    assert mid["loss_review"].item() == pytest.approx(full["loss_review"].item() / 2, rel=1e-5)


def test_sizing_does_not_consume_the_global_rng():
    """The dummy forward that sizes the ABFs draws nothing: the RNG advances exactly as building the
    ABFs alone, as in the official code (which reads the sizes from a table)."""
    torch.manual_seed(0)
    student, teacher = create_model("resnet8"), create_model("resnet20")
    state = torch.random.get_rng_state()
    m = ReviewKD(student, teacher)
    after = torch.random.get_rng_state()
    torch.random.set_rng_state(state)
    [ABF(16, 64, 16, True), ABF(32, 64, 32, True), ABF(64, 64, 64, True), ABF(64, 64, 64, False)]
    assert torch.equal(torch.random.get_rng_state(), after)
    assert [a.conv1[0].in_channels for a in m.abfs] == [16, 32, 64, 64]


def test_paper_preset_recipe(capsys, sandbox):
    assert main(["reproduce", "reviewkd", "--pair", "all", "--dry-run"]) == 0
    cfgs = {c["pair"]: c for c in json.loads(capsys.readouterr().out)}
    assert set(cfgs) == set(OFFICIAL)
    for pair, c in cfgs.items():
        t = c["train"]
        assert (t["batch_size"], t["nesterov"], t["milestones"], t["epochs"]) == (128, True, [151, 181, 211], 240)
        assert t["lr"] == (0.02 if "shuffle" in pair or "mobile" in pair else 0.1)
        assert c["augment"]["mean"][0] == pytest.approx(125.3 / 255)
    weights = {p: c["method"]["review_weight"] for p, c in cfgs.items()}
    assert weights["resnet56-resnet20"] == 0.6 and weights["resnet110-resnet32"] == 1.0
    assert weights["resnet32x4-shufflev2"] == 8.0 and weights["resnet32x4-resnet8x4"] == 5.0
