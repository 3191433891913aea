"""FitNet, AT, SP and PKT: losses against hand-derived values, gradients, the connector, every paper
pair's build + forward, and the configured loss names and weights."""
import math

import pytest
import torch

torch.set_num_threads(1)  # a 2-core box shared with other jobs: more threads is much slower

from kdbench.config import resolve  # noqa: E402
from kdbench.distiller import StepContext  # noqa: E402
from kdbench.models import create_model  # noqa: E402
from kdbench.registry import get_paper  # noqa: E402
from kdbench.reproduce import build_distiller  # noqa: E402
from reproductions.at.loss import at_layer_loss, at_loss, attention_map  # noqa: E402
from reproductions.at.method import AT  # noqa: E402
from reproductions.fitnet.loss import hint_loss  # noqa: E402
from kdbench.connectors import ConvReg as ConvRegressor  # noqa: E402
from reproductions.fitnet.method import FitNet  # noqa: E402
from reproductions.pkt.loss import cosine_probabilities, pkt_loss  # noqa: E402
from reproductions.pkt.method import PKT  # noqa: E402
from reproductions.sp.loss import sp_loss  # noqa: E402
from reproductions.sp.method import SP  # noqa: E402

CTX = StepContext(epoch=1, epochs=240)
METHODS = {"fitnet": (FitNet, "loss_hint", 100.0), "at": (AT, "loss_at", 1000.0),
           "sp": (SP, "loss_sp", 3000.0), "pkt": (PKT, "loss_pkt", 30000.0)}
WEIGHT_KEY = {"fitnet": "hint_weight", "at": "at_weight", "sp": "sp_weight", "pkt": "pkt_weight"}
PAPER_PAIRS = ["wrn_40_2-wrn_16_2", "wrn_40_2-wrn_40_1", "resnet56-resnet20", "resnet110-resnet20",
               "resnet110-resnet32", "resnet32x4-resnet8x4", "vgg13-vgg8", "vgg13-mobilenetv2",
               "resnet50-mobilenetv2", "resnet50-vgg8", "resnet32x4-shufflev1", "resnet32x4-shufflev2",
               "wrn_40_2-shufflev1"]


# ---------------------------------------------------------------- FitNet
def test_hint_loss_is_the_elementwise_mean():
    s = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    t = torch.tensor([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 2, 2)
    assert hint_loss(s, t).item() == pytest.approx((0 + 4 + 9 + 16) / 4)  # nn.MSELoss(): mean, not 1/2 sum
    with pytest.raises(ValueError):
        hint_loss(s, torch.zeros(1, 2, 2, 2))


@pytest.mark.parametrize("s_shape, t_shape, kind, kernel", [
    ((2, 8, 32, 32), (2, 16, 16, 16), torch.nn.Conv2d, (3, 3)),           # student 2x larger: stride 2
    ((2, 8, 8, 8), (2, 16, 16, 16), torch.nn.ConvTranspose2d, (4, 4)),    # student 2x smaller: upsample
    ((2, 8, 16, 16), (2, 16, 16, 16), torch.nn.Conv2d, (1, 1)),           # equal: 1x1
    ((2, 8, 8, 8), (2, 16, 4, 4), torch.nn.Conv2d, (3, 3)),               # 8 == 2*4 takes the stride-2 rule
    ((2, 8, 6, 6), (2, 16, 4, 4), torch.nn.Conv2d, (3, 3)),               # valid conv, kernel 1 + 6 - 4
])
def test_conv_regressor_matches_official_rules(s_shape, t_shape, kind, kernel):
    torch.manual_seed(0)
    reg = ConvRegressor(s_shape, t_shape)
    assert type(reg.conv) is kind and tuple(reg.conv.kernel_size) == kernel
    assert isinstance(reg.bn, torch.nn.BatchNorm2d) and reg.use_relu  # conv -> BN -> ReLU
    out = reg(torch.randn(s_shape))
    assert out.shape == t_shape and (out >= 0).all()
    with pytest.raises(ValueError):
        ConvRegressor((2, 8, 4, 4), (2, 16, 16, 16))  # student 4x smaller: the official code refuses too


def test_fitnet_probe_leaves_models_untouched():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", num_classes=10), create_model("resnet20", num_classes=10)
    bn_s = [b.running_mean.clone() for b in student.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    bn_t = [b.running_mean.clone() for b in teacher.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    method = FitNet(student, teacher)
    assert student.training and not teacher.training and "_teacher_step" not in method.__dict__
    after_s = [b.running_mean for b in student.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    after_t = [b.running_mean for b in teacher.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(bn_s + bn_t, after_s + after_t))  # probed in eval mode
    assert set(method.extra_modules()) == {"conv_reg"}
    # resnet8 feats[2] (32, 16, 16) -> resnet20 feats[2] (32, 16, 16): 1x1 conv + bias + BN
    assert method.num_extra_parameters() == 32 * 32 + 32 + 2 * 32


# ---------------------------------------------------------------- AT
def test_attention_map_and_layer_loss_hand_values():
    f_s = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])  # (1, 2, 1, 2): channel mean of squares = [1, 2]
    f_t = torch.tensor([[[[2.0, 0.0]]]])                # (1, 1, 1, 2): [4, 0]
    torch.testing.assert_close(attention_map(f_s), torch.tensor([[1.0, 2.0]]) / math.sqrt(5))
    torch.testing.assert_close(attention_map(f_t), torch.tensor([[1.0, 0.0]]))
    # mean over the 2 positions of ([1, 2]/sqrt5 - [1, 0])^2 = 1 - 1/sqrt5 (channel counts may differ)
    assert at_layer_loss(f_s, f_t).item() == pytest.approx(1 - 1 / math.sqrt(5), rel=1e-6)


def test_at_pools_the_larger_feature_map_before_squaring():
    f_s = torch.tensor([[[[1.0, -1.0], [1.0, -1.0]]]])  # 2x2; average-pooled to 1x1 it is 0
    f_t = torch.tensor([[[[3.0]]]])                      # 1x1
    # pooled student feature 0 -> attention 0 (normalize keeps 0); teacher attention 1 -> (0 - 1)^2
    assert at_layer_loss(f_s, f_t).item() == pytest.approx(1.0)
    assert at_layer_loss(f_t, f_s).item() == pytest.approx(1.0)  # symmetric: the teacher is pooled too


def test_at_sums_zipped_layers_and_mean_over_batch_and_positions():
    torch.manual_seed(0)
    g_s = [torch.randn(3, 4, 8, 8), torch.randn(3, 4, 4, 4), torch.randn(3, 4, 2, 2)]
    g_t = [torch.randn(3, 6, 8, 8), torch.randn(3, 6, 4, 4)]
    total = at_loss(g_s, g_t)
    by_hand = 0.0
    for s, t in zip(g_s, g_t):
        a_s, a_t = s.pow(2).mean(1).flatten(1), t.pow(2).mean(1).flatten(1)
        a_s, a_t = a_s / a_s.norm(dim=1, keepdim=True), a_t / a_t.norm(dim=1, keepdim=True)
        by_hand += ((a_s - a_t) ** 2).sum().item() / (3 * s.shape[2] * s.shape[3])
    assert total.item() == pytest.approx(by_hand, rel=1e-5)


# ---------------------------------------------------------------- SP
def test_sp_hand_value_and_batch_squared_normalisation():
    f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(2, 2, 1, 1)  # G_s = I
    f_t = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).reshape(2, 2, 1, 1)  # G_t = ones -> rows [1, 1]/sqrt2
    # ||G_t - G_s||_F^2 = 2 * ((1/sqrt2 - 1)^2 + 1/2) = 4 - 2 sqrt2; divided by b^2 = 4
    assert sp_loss(f_s, f_t).item() == pytest.approx(1 - math.sqrt(2) / 2, rel=1e-6)
    assert sp_loss(f_s, f_t).dim() == 0
    # rows are normalised: scaling one sample of either side changes nothing
    assert sp_loss(f_s * torch.tensor([3.0, 1.0]).reshape(2, 1, 1, 1), f_t).item() == pytest.approx(
        1 - math.sqrt(2) / 2, rel=1e-6)


def test_sp_flattens_channels_last_maps_in_chw_order():
    torch.manual_seed(0)
    f_s, f_t = torch.randn(4, 3, 5, 5), torch.randn(4, 7, 2, 2)
    ref = sp_loss(f_s, f_t)
    cl = sp_loss(f_s.to(memory_format=torch.channels_last), f_t.to(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, ref)


# ---------------------------------------------------------------- PKT
def test_pkt_hand_value():
    f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # cosines I -> (I + 1)/2 -> rows [2/3, 1/3]
    f_t = torch.tensor([[1.0, 0.0], [2.0, 0.0]])  # cosines all 1 -> rows [1/2, 1/2]
    torch.testing.assert_close(cosine_probabilities(f_s), torch.tensor([[2 / 3, 1 / 3], [1 / 3, 2 / 3]]))
    # mean over the 4 entries: 2 rows * (1/2 log(3/4) + 1/2 log(3/2)) / 4 = log(9/8) / 4
    assert pkt_loss(f_s, f_t).item() == pytest.approx(math.log(9 / 8) / 4, rel=1e-5)


def test_pkt_eps_in_the_norm_and_in_the_log_ratio():
    """eps = 1e-7 is added to each norm and to both probabilities inside the log (float64 here, so the
    1e-7-sized terms are resolved exactly)."""
    eps = 1e-7
    f_t = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)  # cosine -1 between the samples
    f_s = torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)   # cosine +1
    u, v = 1 / (1 + eps), 3 / (3 + eps)  # the unit vectors are slightly shorter than 1
    p_t = [[(1 + u * u) / 2, (1 - u * u) / 2], [(1 - u * u) / 2, (1 + u * u) / 2]]  # rows already sum to 1
    k = [[(1 + u * u) / 2, (1 + u * v) / 2], [(1 + u * v) / 2, (1 + v * v) / 2]]
    q = [[k[i][j] / sum(k[i]) for j in range(2)] for i in range(2)]
    expected = sum(p_t[i][j] * math.log((p_t[i][j] + eps) / (q[i][j] + eps)) for i in range(2) for j in range(2)) / 4
    assert pkt_loss(f_s, f_t).item() == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(math.log(2) / 2, rel=1e-5)  # eps -> 0: rows [1, 0] vs [1/2, 1/2]
    assert pkt_loss(f_t, f_t).item() == pytest.approx(0.0, abs=1e-12)


def test_pkt_zero_and_nan_rows_become_zero_vectors():
    x = torch.tensor([[0.0, 0.0], [float("inf"), 1.0], [1.0, 0.0]])
    p = cosine_probabilities(x)  # rows 0 and 1 are the zero vector after normalisation (NaN -> 0)
    torch.testing.assert_close(p[0], torch.full((3,), 1 / 3))
    assert torch.isfinite(p).all()


# ---------------------------------------------------------------- losses: gradients
@pytest.mark.parametrize("loss, shapes", [
    (lambda s, t: hint_loss(s, t), ((4, 3, 4, 4), (4, 3, 4, 4))),
    (lambda s, t: at_loss([s], [t]), ((4, 3, 8, 8), (4, 5, 4, 4))),
    (lambda s, t: sp_loss(s, t), ((4, 3, 4, 4), (4, 5, 2, 2))),
    (lambda s, t: pkt_loss(s, t), ((4, 6), (4, 9))),
])
def test_loss_gradients_reach_student_only(loss, shapes):
    torch.manual_seed(1)
    s = torch.rand(shapes[0], requires_grad=True)
    t = torch.rand(shapes[1], requires_grad=True)
    loss(s, t.detach()).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


# ---------------------------------------------------------------- methods
def _tiny_pair(seed=0):
    torch.manual_seed(seed)
    return create_model("resnet8", num_classes=10), create_model("resnet20", num_classes=10)


@pytest.mark.parametrize("paper", list(METHODS))
def test_method_gradients_flow_to_student_and_connector_not_teacher(paper):
    cls, name, _ = METHODS[paper]
    student, teacher = _tiny_pair()
    method = cls(student, teacher).train()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits, losses = method(x, y, CTX)
    assert set(losses) == {"loss_ce", name} and all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the method term alone reaches the student's feature layers
    student.zero_grad()
    losses = method(x, y, CTX)[1]
    losses[name].backward()
    assert student.conv1.weight.grad.abs().sum() > 0
    extra = list(method.extra_parameters())
    if paper == "fitnet":
        assert extra and all(p.grad is not None and torch.isfinite(p.grad).all() for p in extra)
        assert {id(p) for p in extra} <= {id(p) for p in method.trainable_parameters()}
    else:
        assert not extra


@pytest.mark.parametrize("paper", list(METHODS))
def test_loss_names_and_weights_as_configured(paper):
    cls, name, paper_weight = METHODS[paper]
    student, teacher = _tiny_pair(2)
    cfg = resolve(paper, get_paper(paper).spec, "paper", "resnet32x4-resnet8x4", 0)
    key = WEIGHT_KEY[paper]
    assert cfg.method["ce_weight"] == 1.0 and cfg.method[key] == paper_weight
    built = build_distiller(get_paper(paper), cfg, student, teacher)
    assert type(built) is cls and built.ce_weight == 1.0 and getattr(built, key) == paper_weight
    if paper == "fitnet":
        assert built.hint_layer == 2
    if paper == "at":
        assert built.p == 2.0

    method = cls(student, teacher, ce_weight=0.25, **{key: 7.0}).eval()  # eval: deterministic BN
    x, y = torch.rand(3, 3, 32, 32), torch.randint(0, 10, (3,))
    logits, losses = method(x, y, CTX)
    with torch.no_grad():
        s, t = student.forward_features(x), teacher.forward_features(x)
        raw = {"fitnet": lambda: hint_loss(method.conv_reg(s.feats[2]), t.feats[2]),
               "at": lambda: at_loss(s.feats[1:-1], t.feats[1:-1], 2.0),
               "sp": lambda: sp_loss(s.feats[-2], t.feats[-2]),
               "pkt": lambda: pkt_loss(s.feats[-1], t.feats[-1])}[paper]()
    torch.testing.assert_close(logits, s.logits)
    torch.testing.assert_close(losses["loss_ce"], 0.25 * torch.nn.functional.cross_entropy(s.logits, y))
    torch.testing.assert_close(losses[name], 7.0 * raw)
    # the teacher ran through teacher_features, so a +kd term reuses that pass
    cached = method.__dict__["_teacher_step"]
    assert cached[0] is x and method.step_teacher_logits(x) is cached[1]
    torch.testing.assert_close(cached[1], t.logits)


def test_presets_follow_the_crd_recipe_and_share_the_dkd_smoke_teacher():
    kd, dkd = get_paper("kd").spec, get_paper("dkd").spec
    dkd_smoke = {k: v for k, v in dkd["presets"]["smoke"].items() if k != "method"}  # DKD's warm-up only
    for paper in METHODS:
        spec = get_paper(paper).spec
        assert spec["presets"]["smoke"] == dkd_smoke
        assert spec["defaults"]["train"] == kd["defaults"]["train"]
        mine, theirs = spec["presets"]["paper"], kd["presets"]["paper"]
        assert mine["pairs"] == theirs["pairs"] and list(mine["pairs"]) == PAPER_PAIRS
        assert {k: v for k, v in mine.items() if k not in ("reported_method", "description")} == \
            {k: v for k, v in theirs.items() if k not in ("reported_method", "description")}
        targets = get_paper(paper).targets("paper")
        assert set(targets) == set(PAPER_PAIRS)  # every pair has its RepDistiller number
        assert all(r.method == mine["reported_method"] and "@b84f547" in r.source for r in targets.values())


# ---------------------------------------------------------------- every paper pair builds and runs
@pytest.mark.parametrize("pair", PAPER_PAIRS)
def test_every_paper_pair_builds_and_runs(pair):
    teacher_name, student_name = pair.split("-")
    torch.manual_seed(0)
    teacher = create_model(teacher_name, num_classes=100)
    student = create_model(student_name, num_classes=100)
    x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 100, (2,))
    for paper, (cls, name, _) in METHODS.items():
        method = cls(student, teacher).train()
        with torch.no_grad():
            logits, losses = method(x, y, CTX)
        assert logits.shape == (2, 100) and set(losses) == {"loss_ce", name}, (paper, pair)
        assert all(torch.isfinite(v) for v in losses.values()), (paper, pair, losses)
        if paper == "fitnet":
            with torch.no_grad():
                hint = method.conv_reg(student.forward_features(x).feats[2])
                assert hint.shape == teacher.forward_features(x).feats[2].shape
            assert method.num_extra_parameters() > 0
