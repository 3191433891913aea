"""RKD, CC, NST and VID: losses against hand-derived values, gradients, every paper pair's build +
forward, and the configured loss names and weights."""
import math

import pytest
import torch
from torch import nn

torch.set_num_threads(1)  # a 2-core box shared with other jobs: more threads is much slower

from kdbench.config import resolve  # noqa: E402
from kdbench.distiller import StepContext  # noqa: E402
from kdbench.models import create_model  # noqa: E402
from kdbench.registry import get_paper  # noqa: E402
from kdbench.reproduce import build_distiller  # noqa: E402
from reproductions.cc.loss import cc_loss  # noqa: E402
from reproductions.cc.method import CC  # noqa: E402
from reproductions.nst.loss import nst_layer_loss, nst_loss  # noqa: E402
from reproductions.nst.method import NST  # noqa: E402
from reproductions.rkd.loss import pdist, rkd_angle_loss, rkd_distance_loss, rkd_loss  # noqa: E402
from reproductions.rkd.method import RKD  # noqa: E402
from reproductions.vid.loss import init_log_scale, predicted_variance, vid_loss, vid_nll  # noqa: E402
from reproductions.vid.method import VID  # noqa: E402

CTX = StepContext(epoch=1, epochs=240)
PAPERS = {"rkd": RKD, "cc": CC, "nst": NST, "vid": VID}
PAPER_PAIRS = ["wrn_40_2-wrn_16_2", "wrn_40_2-wrn_40_1", "resnet56-resnet20", "resnet110-resnet20",
               "resnet110-resnet32", "resnet32x4-resnet8x4", "vgg13-vgg8", "vgg13-mobilenetv2",
               "resnet50-mobilenetv2", "resnet50-vgg8", "resnet32x4-shufflev1", "resnet32x4-shufflev2",
               "wrn_40_2-shufflev1"]
SQ2 = math.sqrt(2.0)


def huber(x: float) -> float:
    """smooth-L1 with beta 1 (PyTorch's default), on one number."""
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


# ---------------------------------------------------------------- RKD
# student: right isosceles triangle; teacher: three collinear points
RKD_S = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
RKD_T = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])


def test_pdist_euclidean_with_zero_diagonal_and_clamp():
    d = pdist(RKD_S)
    expected = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, SQ2], [1.0, SQ2, 0.0]])
    torch.testing.assert_close(d, expected)
    dup = pdist(torch.tensor([[1.0, 2.0], [1.0, 2.0]]))  # duplicates: clamped to eps = 1e-12 -> 1e-6
    assert dup[0, 0] == 0 and dup[0, 1].item() == pytest.approx(1e-6, rel=1e-3)
    torch.testing.assert_close(pdist(RKD_S, squared=True), expected ** 2)


def test_rkd_distance_hand_value():
    m_s = (4 + 2 * SQ2) / 6  # mean of the 6 positive student distances (1, 1, 1, 1, sqrt2, sqrt2)
    t01, t02, t12 = 1 / (4 / 3), 2 / (4 / 3), 1 / (4 / 3)  # teacher mean (1 + 2 + 1) * 2 / 6 = 4/3
    s01, s02, s12 = 1 / m_s, 1 / m_s, SQ2 / m_s
    # smooth-L1 averaged over all 9 entries (the 3 diagonal entries are 0 - 0)
    expected = 2 * (huber(s01 - t01) + huber(s02 - t02) + huber(s12 - t12)) / 9
    assert rkd_distance_loss(RKD_S, RKD_T).item() == pytest.approx(expected, rel=1e-5)


def test_rkd_angle_hand_value():
    # angle[a, b, c] = cos at anchor a between b and c; entries with b == a or c == a are 0 on both sides.
    # anchor 0: student e01 . e02 = 0, teacher 1            -> (b, c) = (1, 2), (2, 1)
    # anchor 1: student (-1, 0) . (-1, 1)/sqrt2 = 1/sqrt2, teacher (-1, 0) . (1, 0) = -1
    # anchor 2: student (0, -1) . (1, -1)/sqrt2 = 1/sqrt2, teacher (-1, 0) . (-1, 0) = 1
    # every (b, b) entry with b != a is 1 on both sides
    expected = 2 * (huber(0 - 1) + huber(1 / SQ2 + 1) + huber(1 / SQ2 - 1)) / 27  # mean over B^3 = 27
    assert rkd_angle_loss(RKD_S, RKD_T).item() == pytest.approx(expected, rel=1e-5)


def test_rkd_total_is_25_distance_plus_50_angle_and_invariant_to_similarity_transforms():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    d, a = rkd_distance_loss(s, t).item(), rkd_angle_loss(s, t).item()
    assert rkd_loss(s, t).item() == pytest.approx(25 * d + 50 * a, rel=1e-6)
    # distances are divided by their mean, angles are scale and translation free
    assert rkd_loss(s, 3.0 * t + 7.0).item() == pytest.approx(rkd_loss(s, t).item(), rel=1e-4)
    assert rkd_loss(s, t).item() > 0 and rkd_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)


def test_rkd_gradient_finite_with_duplicate_samples_and_teacher_detached():
    torch.manual_seed(1)
    s = torch.randn(4, 8)
    s = torch.cat([s, s[:1]]).requires_grad_(True)  # two identical samples: zero difference vectors
    t = torch.randn(5, 8, requires_grad=True)
    rkd_loss(s, t).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


# ---------------------------------------------------------------- CC
def test_cc_hand_value_consecutive_pairs():
    f_s = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 2.0]])
    f_t = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 4.0]])
    # delta = |f_s - f_t| = [[1, 2], [3, 1], [0, 2]]; pairs (0,1): 1*3 + 2*1 = 5, (1,2): 3*0 + 1*2 = 2
    assert cc_loss(f_s, f_t).item() == pytest.approx((5 + 2) / 2)
    assert cc_loss(f_t, f_s).item() == pytest.approx(3.5)  # symmetric (absolute differences)


def test_cc_gradient_reaches_both_sides():
    torch.manual_seed(2)
    e_s, e_t = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    cc_loss(e_s, e_t).backward()
    # the teacher EMBEDDING is trained in RepDistiller, so the loss is not detached on its side
    assert e_s.grad.abs().sum() > 0 and e_t.grad.abs().sum() > 0
    assert torch.isfinite(e_s.grad).all()


# ---------------------------------------------------------------- NST
def test_nst_hand_value():
    f_s = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).reshape(1, 2, 1, 2)  # 2 channels over 2 positions
    f_t = torch.tensor([[0.0, 3.0]]).reshape(1, 1, 1, 2)
    # normalised: s0 = (1, 0), s1 = (1, 1)/sqrt2, t0 = (0, 1); k(x, y) = (x.y)^2
    k_tt = 1.0
    k_ss = (1 + 0.5 + 0.5 + 1) / 4
    k_st = (0 + 0.5) / 2
    assert nst_layer_loss(f_s, f_t).item() == pytest.approx(k_tt + k_ss - 2 * k_st, rel=1e-6)
    assert nst_loss([f_s, f_s], [f_t, f_t]).item() == pytest.approx(2 * 1.25, rel=1e-6)  # sum over stages


def _blocks(tl, tr, bl, br):
    """4x4 map whose 2x2 blocks average to the given values."""
    x = torch.zeros(1, 1, 4, 4)
    x[..., :2, :2], x[..., :2, 2:], x[..., 2:, :2], x[..., 2:, 2:] = tl, tr, bl, br
    x[..., 0, 0] += 1.0
    x[..., 0, 1] -= 1.0  # perturb inside the top-left block without changing its mean
    return x


def test_nst_pools_the_larger_map_to_the_smaller():
    small = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).reshape(1, 1, 2, 2)  # normalised (1, 0, 0, 0)
    big = _blocks(1.0, 0.0, 0.0, 1.0)  # pooled (1, 0, 0, 1) -> normalised (1, 0, 0, 1)/sqrt2
    # k_ss = k_tt = 1, k_st = (1/sqrt2)^2 = 1/2
    assert nst_layer_loss(small, big).item() == pytest.approx(1 + 1 - 1, rel=1e-6)  # teacher pooled
    assert nst_layer_loss(big, small).item() == pytest.approx(1 + 1 - 1, rel=1e-6)  # student pooled


def test_nst_equals_the_official_broadcast_kernel_and_gradients():
    torch.manual_seed(3)
    f_s = torch.randn(3, 5, 4, 4, requires_grad=True)
    f_t = torch.randn(3, 7, 4, 4, requires_grad=True)

    def official_poly(a, b):  # distiller_zoo/NST.py poly_kernel, written out
        return (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2)

    s = nn.functional.normalize(f_s.detach().reshape(3, 5, -1), dim=2)
    t = nn.functional.normalize(f_t.detach().reshape(3, 7, -1), dim=2)
    expected = official_poly(t, t).mean() + official_poly(s, s).mean() - 2 * official_poly(s, t).mean()
    loss = nst_layer_loss(f_s, f_t)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(f_s.grad).all() and f_s.grad.abs().sum() > 0 and f_t.grad is None
    assert nst_layer_loss(f_t.detach(), f_t.detach()).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- VID
def test_vid_initial_variance_is_init_pred_var():
    alpha = torch.tensor([init_log_scale(5.0, 1e-5)])
    assert predicted_variance(alpha, 1e-5).item() == pytest.approx(5.0, rel=1e-6)
    assert init_log_scale(5.0, 1e-5) == pytest.approx(math.log(math.exp(5.0 - 1e-5) - 1.0), rel=1e-12)


def test_vid_nll_hand_values():
    alpha5 = torch.full((1,), init_log_scale(5.0, 1e-5))
    mu, target = torch.zeros(1, 1, 1, 2), torch.tensor([1.0, 3.0]).reshape(1, 1, 1, 2)
    # mean of 0.5 * ((t - mu)^2 / 5 + log 5) over the two elements; no 0.5 log(2 pi) constant
    expected = (0.5 * (1 / 5 + math.log(5)) + 0.5 * (9 / 5 + math.log(5))) / 2
    assert vid_nll(mu, target, alpha5, 1e-5).item() == pytest.approx(expected, rel=1e-5)
    # one variance per channel: 1 and 4
    alphas = torch.tensor([math.log(math.expm1(1.0 - 1e-5)), math.log(math.expm1(4.0 - 1e-5))])
    mu, target = torch.zeros(1, 2, 1, 1), torch.full((1, 2, 1, 1), 2.0)
    expected = (0.5 * (4 / 1 + math.log(1)) + 0.5 * (4 / 4 + math.log(4))) / 2
    assert vid_nll(mu, target, alphas, 1e-5).item() == pytest.approx(expected, rel=1e-5)


def test_vid_pools_the_larger_map_before_the_regressor():
    alpha = torch.full((1,), init_log_scale(5.0, 1e-5))
    big, small = _blocks(1.0, 0.0, 0.0, 1.0), torch.zeros(1, 1, 2, 2)
    expected = 0.5 * ((1 + 0 + 0 + 1) / 4 / 5 + math.log(5))  # pooled (1, 0, 0, 1) against 0
    assert vid_loss(small, big, nn.Identity(), alpha).item() == pytest.approx(expected, rel=1e-5)
    seen = []
    vid_loss(big, small, lambda x: seen.append(x.shape) or x, alpha)
    assert seen == [torch.Size([1, 1, 2, 2])]  # the student map is pooled before regression


# ---------------------------------------------------------------- methods
def _pair(teacher="resnet14", student="resnet8"):
    torch.manual_seed(0)
    return create_model(student), create_model(teacher)


@pytest.mark.parametrize("name", list(PAPERS))
def test_gradients_flow_to_student_and_extra_parts_not_teacher(name):
    student, teacher = _pair()
    method = PAPERS[name](student, teacher).train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    logits, losses = method(x, y, CTX)
    assert logits.shape == (4, 100) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())
    for name_, module in method.extra_modules().items():
        for p in module.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name_
    assert not teacher.training and method.student.training


def test_extra_parts_match_repdistiller():
    student, teacher = _pair("resnet32x4", "resnet8x4")
    cc = CC(student, teacher)
    assert (cc.embed_s.linear.in_features, cc.embed_s.linear.out_features) == (256, 128)
    assert (cc.embed_t.linear.in_features, cc.embed_t.linear.out_features) == (256, 128)
    vid = VID(student, teacher)
    assert len(vid.regressors) == 3  # feats[1:-1]: layer1..3
    for reg, c_s, c_t in zip(vid.regressors, [64, 128, 256], [64, 128, 256]):
        convs = [m for m in reg.regressor if isinstance(m, nn.Conv2d)]
        assert [(c.in_channels, c.out_channels) for c in convs] == [(c_s, c_t), (c_t, c_t), (c_t, c_t)]
        assert all(c.bias is None and c.kernel_size == (1, 1) for c in convs)
        torch.testing.assert_close(predicted_variance(reg.log_scale.detach()), torch.full((c_t,), 5.0))
    assert RKD(student, teacher).num_extra_parameters() == 0 and NST(student, teacher).num_extra_parameters() == 0
    assert student.training  # the shape probe restores the training mode


@pytest.mark.parametrize("name, weights, expect", [
    ("rkd", {"ce_weight": 0.5, "rkd_weight": 2.0, "distance_weight": 3.0, "angle_weight": 7.0},
     lambda s, t: {"loss_rkd_distance": 2.0 * 3.0 * rkd_distance_loss(s.feats[-1], t.feats[-1]),
                   "loss_rkd_angle": 2.0 * 7.0 * rkd_angle_loss(s.feats[-1], t.feats[-1])}),
    ("nst", {"ce_weight": 0.5, "nst_weight": 3.0},
     lambda s, t: {"loss_nst": 3.0 * nst_loss(s.feats[1:-1], t.feats[1:-1])}),
])
def test_loss_names_and_weights_parameter_free(name, weights, expect):
    student, teacher = _pair()
    method = PAPERS[name](student, teacher, **weights).eval()
    x, y = torch.randn(3, 3, 32, 32), torch.randint(0, 100, (3,))
    logits, losses = method(x, y, CTX)
    with torch.no_grad():
        s, t = student.forward_features(x), teacher.forward_features(x)
        want = {"loss_ce": 0.5 * nn.functional.cross_entropy(s.logits, y), **expect(s, t)}
    assert set(losses) == set(want)
    for key in want:
        torch.testing.assert_close(losses[key].detach(), want[key], rtol=1e-5, atol=1e-6)


def test_loss_names_and_weights_with_learned_parts():
    student, teacher = _pair()
    x, y = torch.randn(3, 3, 32, 32), torch.randint(0, 100, (3,))
    cc = CC(student, teacher, ce_weight=0.5, cc_weight=3.0, feat_dim=16).eval()
    vid = VID(student, teacher, ce_weight=0.5, vid_weight=3.0, init_pred_var=2.0).eval()
    with torch.no_grad():
        s, t = student.forward_features(x), teacher.forward_features(x)
        ce = 0.5 * nn.functional.cross_entropy(s.logits, y)
        _, l_cc = cc(x, y, CTX)
        _, l_vid = vid(x, y, CTX)
        want_cc = 3.0 * cc_loss(cc.embed_s(s.feats[-1]), cc.embed_t(t.feats[-1]))
        want_vid = 3.0 * sum(vid_loss(fs, ft, r.regressor, r.log_scale) for r, fs, ft
                             in zip(vid.regressors, s.feats[1:-1], t.feats[1:-1]))
    assert set(l_cc) == {"loss_ce", "loss_cc"} and set(l_vid) == {"loss_ce", "loss_vid"}
    torch.testing.assert_close(l_cc["loss_ce"], ce)
    torch.testing.assert_close(l_cc["loss_cc"], want_cc, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l_vid["loss_vid"], want_vid, rtol=1e-5, atol=1e-6)
    assert cc.embed_s.linear.out_features == 16
    assert predicted_variance(vid.regressors[0].log_scale.detach())[0].item() == pytest.approx(2.0, rel=1e-5)


@pytest.mark.parametrize("name", ["rkd", "cc"])
def test_batch_relations_need_two_samples(name):
    student, teacher = _pair()
    with pytest.raises(ValueError, match="at least 2"):
        PAPERS[name](student, teacher)(torch.randn(1, 3, 32, 32), torch.zeros(1, dtype=torch.long), CTX)


# ---------------------------------------------------------------- configs and every paper pair
@pytest.mark.parametrize("paper_id", list(PAPERS))
def test_paper_config_matches_repdistiller(paper_id):
    paper = get_paper(paper_id)
    assert paper.pairs("paper") == PAPER_PAIRS
    cfg = resolve(paper_id, paper.spec, "paper", "resnet32x4-shufflev2", 0)
    assert cfg.train.lr == 0.01 and cfg.train.epochs == 240 and cfg.train.batch_size == 64
    assert cfg.method["ce_weight"] == 1.0 and cfg.kd is None  # -r 1 -a 0
    method_weight = {"rkd": ("rkd_weight", 1.0), "cc": ("cc_weight", 0.02), "nst": ("nst_weight", 50.0),
                     "vid": ("vid_weight", 1.0)}[paper_id]
    assert cfg.method[method_weight[0]] == method_weight[1]
    targets = paper.targets("paper")
    assert sorted(targets) == sorted(PAPER_PAIRS)  # every pair has its RepDistiller README number
    assert all(r.method == paper_id.upper() and r.top1 is not None for r in targets.values())


@pytest.mark.parametrize("pair", PAPER_PAIRS)
def test_every_paper_pair_builds_and_runs(pair):
    teacher_name, student_name = pair.split("-", 1)
    torch.manual_seed(0)
    teacher, student = create_model(teacher_name), create_model(student_name)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,))
    for paper_id in PAPERS:
        paper = get_paper(paper_id)
        cfg = resolve(paper_id, paper.spec, "paper", pair, 0)
        method = build_distiller(paper, cfg, student, teacher).train()
        logits, losses = method(x, y, CTX)
        assert logits.shape == (2, 100)
        assert losses and all(torch.isfinite(v) and v.dim() == 0 for v in losses.values()), (paper_id, losses)


def test_plus_kd_variant_adds_the_kd_term():
    paper = get_paper("nst+kd")
    cfg = resolve(paper.id, paper.spec, "smoke", "resnet20-resnet8", 0)
    student, teacher = create_model("resnet8"), create_model("resnet20")
    method = build_distiller(paper, cfg, student, teacher)
    _, losses = method(torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,)), CTX)
    assert set(losses) == {"loss_ce", "loss_nst", "loss_kd_plus"}


@pytest.mark.parametrize("name", ["nst", "vid"])
def test_stage_count_mismatch_is_refused(name):
    # resnet8 exposes 3 stage maps (feats[1:-1]), ResNet18 4: the official zip() would silently drop one
    with pytest.raises(ValueError, match="one to one"):
        PAPERS[name](create_model("resnet8"), create_model("ResNet18"))
