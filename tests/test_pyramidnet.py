"""OFD's CIFAR-100 models in the zoo against clovaai/overhaul-distillation @76344a8 (``CIFAR-100/models``):
``pyramidnet200`` / ``pyramidnet110`` (PyramidNet.py), ``wrn_28_4`` / ``wrn_16_4`` / ``wrn_28_2`` /
``wrn_16_2`` (WideResNet.py) and ``resnet56`` (ResNet.py).

The expected layouts (every state-dict key with its shape) and the reference forwards below are
written from reading that code, as functions of a state dict; the official code is not imported.
The reference forwards run BatchNorm on batch statistics, as the official distillation does (teacher
and student in train mode), in float64."""
from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdbench.evaluate import count_parameters
from kdbench.models import create_model
from kdbench.models.pyramidnet import PyramidNet


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread_module):
    """These tests run on one torch thread (restored after the module)."""


@functools.cache
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "pyramid_bottleneck_small":  # the bottleneck code path of pyramidnet200 at 1/7 of its depth
        return PyramidNet(depth=29, alpha=48, num_classes=100, bottleneck=True)
    return create_model(name, num_classes=100)


# --------------------------------------------------------------------------- layouts read off the official code

def _bn(out: dict, name: str, c: int) -> None:
    out.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})


def official_pyramidnet_layout(depth: int, alpha: float, bottleneck: bool, num_classes: int = 100) -> dict:
    """PyramidNet.__init__ / pyramidal_make_layer: n blocks per stage, the width grows by alpha / (3n)
    per block (accumulated as a float, rounded per block); a block's input width is the previous
    block's output (width x 4 for bottlenecks); no parameters in the shortcuts (average pool, zero
    channels)."""
    n = int((depth - 2) / 9) if bottleneck else int((depth - 2) / 6)
    ratio = 4 if bottleneck else 1
    addrate = alpha / (3 * n * 1.0)
    out = {"conv1.weight": (16, 3, 3, 3)}
    _bn(out, "bn1", 16)
    inplanes, dim = 16, 16.0
    for stage in (1, 2, 3):
        for i in range(n):
            c_in = inplanes if i == 0 else round(dim) * ratio
            dim = dim + addrate
            planes = round(dim)
            p = f"layer{stage}.{i}"
            _bn(out, f"{p}.bn1", c_in)
            if bottleneck:
                out[f"{p}.conv1.weight"] = (planes, c_in, 1, 1)
                _bn(out, f"{p}.bn2", planes)
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                _bn(out, f"{p}.bn3", planes)
                out[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                _bn(out, f"{p}.bn4", planes * 4)
            else:
                out[f"{p}.conv1.weight"] = (planes, c_in, 3, 3)
                _bn(out, f"{p}.bn2", planes)
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                _bn(out, f"{p}.bn3", planes)
        inplanes = round(dim) * ratio
    _bn(out, "bn_final", inplanes)
    out.update({"fc.weight": (num_classes, inplanes), "fc.bias": (num_classes,)})
    return out


def official_wrn_layout(depth: int, widen: int, num_classes: int = 100) -> dict:
    """WideResNet.py: blockK.layer.i BasicBlocks (bn1, conv1, bn2, conv2, a 1x1 convShortcut only
    where the block changes the width), then bn1 and fc."""
    n, ch = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
    out = {"conv1.weight": (16, 3, 3, 3)}
    for b in (1, 2, 3):
        for i in range(n):
            c_in, c_out, p = ch[b - 1] if i == 0 else ch[b], ch[b], f"block{b}.layer.{i}"
            _bn(out, f"{p}.bn1", c_in)
            out[f"{p}.conv1.weight"] = (c_out, c_in, 3, 3)
            _bn(out, f"{p}.bn2", c_out)
            out[f"{p}.conv2.weight"] = (c_out, c_out, 3, 3)
            if c_in != c_out:
                out[f"{p}.convShortcut.weight"] = (c_out, c_in, 1, 1)
    _bn(out, "bn1", ch[3])
    out.update({"fc.weight": (num_classes, ch[3]), "fc.bias": (num_classes,)})
    return out


def official_resnet_layout(depth: int, num_classes: int = 100) -> dict:
    """ResNet.py (basic blocks): conv1/bn1 stem, layerK.i (conv1, bn1, conv2, bn2), a conv+BN
    ``downsample`` in the first block of a stage that changes stride or width, fc."""
    n = (depth - 2) // 6
    out = {"conv1.weight": (16, 3, 3, 3)}
    _bn(out, "bn1", 16)
    inplanes = 16
    for k, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
        for i in range(n):
            c_in, p = inplanes if i == 0 else planes, f"layer{k}.{i}"
            out[f"{p}.conv1.weight"] = (planes, c_in, 3, 3)
            _bn(out, f"{p}.bn1", planes)
            out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            _bn(out, f"{p}.bn2", planes)
            if i == 0 and (stride != 1 or inplanes != planes):
                out[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                _bn(out, f"{p}.downsample.1", planes)
        inplanes = planes
    out.update({"fc.weight": (num_classes, 64), "fc.bias": (num_classes,)})
    return out


LAYOUTS = {
    "pyramidnet200": lambda: official_pyramidnet_layout(200, 240, True),
    "pyramidnet110": lambda: official_pyramidnet_layout(110, 84, False),
    "pyramid_bottleneck_small": lambda: official_pyramidnet_layout(29, 48, True),
    "wrn_28_4": lambda: official_wrn_layout(28, 4),
    "wrn_16_4": lambda: official_wrn_layout(16, 4),
    "wrn_28_2": lambda: official_wrn_layout(28, 2),
    "wrn_16_2": lambda: official_wrn_layout(16, 2),
    "resnet56": lambda: official_resnet_layout(56),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_state_dict_layout_is_the_official_one(name):
    ours = {k: tuple(v.shape) for k, v in _model(name).state_dict().items()}
    expected = LAYOUTS[name]()
    assert set(ours) == set(expected), (sorted(set(ours) - set(expected))[:5], sorted(set(expected) - set(ours))[:5])
    assert ours == expected


def test_parameter_counts_of_the_official_readme():
    # OFD README "Settings": sizes truncated to two decimals (WRN-28-2 has 1,479,220 parameters: "1.47M")
    sizes = {"wrn_28_4": 5.87, "wrn_16_4": 2.77, "wrn_28_2": 1.47, "wrn_16_2": 0.70, "resnet56": 0.86,
             "pyramidnet200": 26.84, "pyramidnet110": 3.91}
    for name, millions in sizes.items():
        count = count_parameters(_model(name))
        assert math.floor(count / 1e4) / 100 == pytest.approx(millions), name
    assert count_parameters(_model("pyramidnet200")) == 26_844_952
    assert count_parameters(_model("pyramidnet110")) == 3_913_536


def test_published_checkpoint_layout_loads_strictly():
    """As the authors' files are stored: PyramidNet under 'state_dict' with DataParallel's 'module.'
    prefix (load_settings.py strips it), possibly without ``num_batches_tracked`` (older PyTorch)."""
    src = _model("pyramidnet110").state_dict()
    stored = {f"module.{k}": v.clone() for k, v in src.items() if not k.endswith("num_batches_tracked")}
    fresh = create_model("pyramidnet110")
    fresh.load_state_dict({k[len("module."):]: v for k, v in stored.items()}, strict=True)
    for k, v in fresh.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, src[k]), k


# --------------------------------------------------------------------------- the official forwards, from a state dict

def _conv(sd, name, x, stride=1):
    w = sd[f"{name}.weight"]
    return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)


def _bnf(sd, name, x):
    return F.batch_norm(x, None, None, sd[f"{name}.weight"], sd[f"{name}.bias"], training=True, eps=1e-5)


def _blocks(sd, stage: str) -> int:
    return len({k.split(".")[1] for k in sd if k.startswith(f"{stage}.")})


def official_pyramidnet(sd, x, bottleneck: bool):
    """PyramidNet.forward / extract_feature(x, preReLU=True): ([feat1..3], [pre1..3], logits)."""
    def block(p, x, stride):
        out = _bnf(sd, f"{p}.bn1", x)
        if bottleneck:
            out = F.relu(_bnf(sd, f"{p}.bn2", _conv(sd, f"{p}.conv1", out)))
            out = F.relu(_bnf(sd, f"{p}.bn3", _conv(sd, f"{p}.conv2", out, stride)))
            out = _bnf(sd, f"{p}.bn4", _conv(sd, f"{p}.conv3", out))
        else:
            out = F.relu(_bnf(sd, f"{p}.bn2", _conv(sd, f"{p}.conv1", out, stride)))
            out = _bnf(sd, f"{p}.bn3", _conv(sd, f"{p}.conv2", out))
        shortcut = F.avg_pool2d(x, (2, 2), stride=(2, 2), ceil_mode=True) if stride != 1 else x
        if out.shape[1] != shortcut.shape[1]:
            b, _, h, w = shortcut.shape
            shortcut = torch.cat((shortcut, shortcut.new_zeros(b, out.shape[1] - shortcut.shape[1], h, w)), 1)
        return out + shortcut

    x = _bnf(sd, "bn1", _conv(sd, "conv1", x))
    feats = []
    for k in (1, 2, 3):
        for i in range(_blocks(sd, f"layer{k}")):
            x = block(f"layer{k}.{i}", x, 2 if k > 1 and i == 0 else 1)
        feats.append(x)
    pooled = F.avg_pool2d(F.relu(_bnf(sd, "bn_final", feats[2])), 8).flatten(1)
    logits = F.linear(pooled, sd["fc.weight"], sd["fc.bias"])
    if bottleneck:
        pre = [_bnf(sd, f"{l}.0.bn2", _conv(sd, f"{l}.0.conv1", _bnf(sd, f"{l}.0.bn1", f)))
               for l, f in (("layer2", feats[0]), ("layer3", feats[1]))]
    else:
        pre = [_bnf(sd, "layer2.0.bn1", feats[0]), _bnf(sd, "layer3.0.bn1", feats[1])]
    return feats, pre + [_bnf(sd, "bn_final", feats[2])], logits


def official_wrn(sd, x):
    """WideResNet.forward / extract_feature(x, preReLU=True)."""
    def block(p, x, stride):
        equal = f"{p}.convShortcut.weight" not in sd
        if not equal:
            x = F.relu(_bnf(sd, f"{p}.bn1", x))
            out = x
        else:
            out = F.relu(_bnf(sd, f"{p}.bn1", x))
        out = F.relu(_bnf(sd, f"{p}.bn2", _conv(sd, f"{p}.conv1", out, stride)))
        out = _conv(sd, f"{p}.conv2", out)
        return (x if equal else _conv(sd, f"{p}.convShortcut", x, stride)) + out

    x = _conv(sd, "conv1", x)
    feats = []
    for k in (1, 2, 3):
        for i in range(len({key.split(".")[2] for key in sd if key.startswith(f"block{k}.layer.")})):
            x = block(f"block{k}.layer.{i}", x, 2 if k > 1 and i == 0 else 1)
        feats.append(x)
    pooled = F.avg_pool2d(F.relu(_bnf(sd, "bn1", feats[2])), 8).flatten(1)
    logits = F.linear(pooled, sd["fc.weight"], sd["fc.bias"])
    pre = [_bnf(sd, "block2.layer.0.bn1", feats[0]), _bnf(sd, "block3.layer.0.bn1", feats[1]),
           _bnf(sd, "bn1", feats[2])]
    return feats, pre, logits


def official_resnet(sd, x):
    """OFD's ResNet.py: no ReLU after the stem nor at a block's end, a ReLU at each block's input;
    extract_feature(preReLU=True) returns the raw stage sums."""
    def block(p, x, stride):
        x = F.relu(x)
        residual = x
        out = F.relu(_bnf(sd, f"{p}.bn1", _conv(sd, f"{p}.conv1", x, stride)))
        out = _bnf(sd, f"{p}.bn2", _conv(sd, f"{p}.conv2", out))
        if f"{p}.downsample.0.weight" in sd:
            residual = _bnf(sd, f"{p}.downsample.1", _conv(sd, f"{p}.downsample.0", x, stride))
        return out + residual

    x = _bnf(sd, "bn1", _conv(sd, "conv1", x))
    feats = []
    for k in (1, 2, 3):
        for i in range(_blocks(sd, f"layer{k}")):
            x = block(f"layer{k}.{i}", x, 2 if k > 1 and i == 0 else 1)
        feats.append(x)
    pooled = F.avg_pool2d(F.relu(feats[2]), 8).flatten(1)
    return feats, list(feats), F.linear(pooled, sd["fc.weight"], sd["fc.bias"])


def _randomised(name: str) -> nn.Module:
    """A float64 copy with random BN affine parameters (so margins and biases matter), train mode."""
    model = copy.deepcopy(_model(name)).double().train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g, dtype=torch.float64))
                m.bias.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64) * 0.3)
    return model


REFERENCES = {"pyramidnet110": functools.partial(official_pyramidnet, bottleneck=False),
              "pyramid_bottleneck_small": functools.partial(official_pyramidnet, bottleneck=True),
              "wrn_16_4": official_wrn, "wrn_16_2": official_wrn, "resnet56": official_resnet}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_forward_and_prerelu_features_equal_the_official_ones(name):
    model = _randomised(name)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        feats, pre, logits = REFERENCES[name](model.state_dict(), x)
        out = model.forward_features(x)
        plain = model(x)
    close = functools.partial(torch.testing.assert_close, rtol=1e-9, atol=1e-9)
    close(out.logits, logits)
    close(plain, logits)
    for ours, ref in zip(out.preact_feats[1:4], pre):  # what OFD distils
        close(ours, ref)
    if name == "resnet56":  # OFD's preReLU=False features are the ReLU of those; ours are the post-ReLU outputs
        for ours, ref in zip(out.feats[1:4], feats):
            close(ours, F.relu(ref))
    else:
        for ours, ref in zip(out.feats[1:4], feats):
            close(ours, ref)


# --------------------------------------------------------------------------- BN before ReLU, channels, features

OFFICIAL_BN_BEFORE_RELU = {  # get_bn_before_relu() of the official models, by module name
    "pyramidnet200": ["layer2.0.bn2", "layer3.0.bn2", "bn_final"],
    "pyramid_bottleneck_small": ["layer2.0.bn2", "layer3.0.bn2", "bn_final"],
    "wrn_28_4": ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"],
    "wrn_16_2": ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"],
    "resnet56": ["layer1.8.bn2", "layer2.8.bn2", "layer3.8.bn2"],
    # the official PyramidNet names bn2 for basic blocks too, which does not produce its basic-block
    # features (bn1(f)); only a teacher's BNs are used, and no OFD setting has a basic PyramidNet teacher
    "pyramidnet110": ["layer2.0.bn1", "layer3.0.bn1", "bn_final"],
}


@pytest.mark.parametrize("name", list(OFFICIAL_BN_BEFORE_RELU))
def test_bn_before_relu_and_channel_numbers(name):
    model = _model(name)
    names = {id(m): n for n, m in model.named_modules()}
    assert [names[id(bn)] for bn in model.get_bn_before_relu()] == OFFICIAL_BN_BEFORE_RELU[name]
    sd = model.state_dict()
    # the official get_channel_num(): the connector widths, i.e. the channels of the pre-ReLU features
    if name.startswith("wrn"):
        channels = [sd["block2.layer.0.bn1.weight"].numel(), sd["block3.layer.0.bn1.weight"].numel(),
                    sd["bn1.weight"].numel()]
    elif name == "resnet56":
        channels = [16, 32, 64]
    elif name == "pyramidnet110":  # conv1.in_channels
        channels = [sd["layer2.0.conv1.weight"].shape[1], sd["layer3.0.conv1.weight"].shape[1],
                    sd["bn_final.weight"].numel()]
    else:  # bottleneck: conv1.out_channels
        channels = [sd["layer2.0.conv1.weight"].shape[0], sd["layer3.0.conv1.weight"].shape[0],
                    sd["bn_final.weight"].numel()]
    if name == "pyramidnet200":
        assert channels == [100, 180, 1024]
        assert model.feature_channels() == [16, 384, 704, 1024, 1024]
    model.eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    captured = []
    hooks = [bn.register_forward_hook(lambda m, i, o: captured.append(o)) for bn in model.get_bn_before_relu()]
    try:
        with torch.no_grad():
            out = model.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    assert [f.shape[1] for f in out.preact_feats[1:4]] == channels
    assert out.logits.shape == (1, 100) and out.feats[-1] is out.preact_feats[-1]
    assert [f.shape[-1] for f in out.preact_feats[1:4]] == [32, 16, 8]
    if name != "resnet56":  # each BN's output IS the pre-ReLU feature (ResNet's BN precedes the residual sum)
        assert len(captured) == 3 and all(c is f for c, f in zip(captured, out.preact_feats[1:4]))


@pytest.mark.parametrize("name", ["pyramidnet110", "pyramid_bottleneck_small", "wrn_16_2"])
def test_replay_leaves_the_running_statistics_of_the_official_feature_call(name):
    """Official extract_feature(preReLU=True) on a train-mode student: the forward, then the pre-ReLU
    tensors recomputed with the next block's modules (their BNs update a second time)."""
    official, ours = copy.deepcopy(_model(name)).train(), copy.deepcopy(_model(name)).train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = official.forward_features(x)
        f1, f2, f3 = out.feats[1:4]
        if name.startswith("wrn"):
            official.block2.layer[0].bn1(f1), official.block3.layer[0].bn1(f2), official.bn1(f3)
        elif name == "pyramidnet110":
            official.layer2[0].bn1(f1), official.layer3[0].bn1(f2), official.bn_final(f3)
        else:
            for layer, f in ((official.layer2[0], f1), (official.layer3[0], f2)):
                layer.bn2(layer.conv1(layer.bn1(f)))
            official.bn_final(f3)
        ours.replay_official_preact_bn_update(ours.forward_features(x).feats)
    for (k, a), (_, b) in zip(official.state_dict().items(), ours.state_dict().items()):
        assert torch.equal(a, b), k
    assert ours.get_bn_before_relu()[0].num_batches_tracked.item() == 2
