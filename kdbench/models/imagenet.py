"""ImageNet-scale models by name: ``torchvision:<name>`` and ``timm:<name>``.

The library's own model is returned (same class hierarchy, same state-dict
keys, so the library's pretrained weights and ImageNet KD checkpoints load
unchanged); we only swap its class for a subclass that adds the zoo's feature
API:

* torchvision ResNets (resnet18...152, resnext, wide_resnet):
  ``forward_features`` gives ``feats = [relu(bn1(conv1(x))), layer1, layer2,
  layer3, layer4, pooled]`` and ``preact_feats = [bn1(conv1(x)), layer1_pre,
  ..., layer4_pre, pooled]`` (the stem is taken before the max-pool, as in
  mdistiller's ImageNet ResNet; unlike the CIFAR zoo, ``preact_feats[0]`` is a
  real pre-ReLU tensor), plus ``feature_channels``, ``get_feat_modules`` and
  ``get_bn_before_relu`` (last BN of each of the 4 stages);
* timm models with ``forward_intermediates``: ``feats = [<stage outputs of
  feature_info>, pooled pre-logits]``, ``preact_feats = None``. ``forward`` is
  ``forward_head(<timm forward_features>(x))``, timm's standard forward
  (``forward_features`` is taken by our API);
* any other model: ``forward`` untouched, ``forward_features`` raises
  ``NotImplementedError``.

``pretrained=True`` maps to torchvision ``weights="DEFAULT"`` / timm
``pretrained=True`` and downloads; the default ``False`` never touches the
network.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .features import FeatureOutput

__all__ = ["create_external_model", "TorchvisionResNet"]


def _unknown(library: str, name: str, hint: str) -> KeyError:
    return KeyError(f"unknown {library} model {name!r}; valid choices: {hint}")


# --------------------------------------------------------------------------- class swapping

class _ExternalMixin:
    """Marks a library model whose class was swapped; pickles back to the same swap."""

    _kd_mixin: type = object
    _kd_base: type = object
    _kd_spec: str = ""

    def __reduce__(self):
        return _rebuild, (self._kd_mixin, self._kd_base), self.__dict__.copy()


_SWAPPED: dict[tuple[type, type], type] = {}


def _swapped_class(mixin: type, base: type) -> type:
    key = (mixin, base)
    if key not in _SWAPPED:
        _SWAPPED[key] = type(base.__name__, (mixin, base),
                             {"_kd_mixin": mixin, "_kd_base": base, "__module__": base.__module__})
    return _SWAPPED[key]


def _rebuild(mixin: type, base: type):
    cls = _swapped_class(mixin, base)
    return cls.__new__(cls)


def _swap(model: nn.Module, mixin: type, spec: str) -> nn.Module:
    model.__class__ = _swapped_class(mixin, type(model))
    model._kd_spec = spec
    return model


class _NoFeatures(_ExternalMixin):
    def forward_features(self, x: torch.Tensor) -> FeatureOutput:
        raise NotImplementedError(
            f"{self._kd_spec} does not expose intermediate features in kdbench "
            "(supported: torchvision ResNets, timm models with forward_intermediates)")

    def feature_channels(self) -> list[int]:
        raise NotImplementedError(f"{self._kd_spec} does not expose intermediate features in kdbench")


# --------------------------------------------------------------------------- torchvision

def _tv_block(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A torchvision BasicBlock/Bottleneck forward that also returns the pre-ReLU sum."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    identity = x if block.downsample is None else block.downsample(x)
    if isinstance(block, BasicBlock):
        out = block.relu(block.bn1(block.conv1(x)))
        out = block.bn2(block.conv2(out))
    elif isinstance(block, Bottleneck):
        out = block.relu(block.bn1(block.conv1(x)))
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:  # pragma: no cover - custom blocks
        raise NotImplementedError(f"unsupported ResNet block {type(block).__name__}")
    preact = out + identity
    return F.relu(preact), preact


def _tv_stage(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for block in stage[:-1]:
        x = block(x)
    return _tv_block(stage[-1], x)


class _TorchvisionResNetFeatures(_ExternalMixin):
    def forward_features(self, x: torch.Tensor) -> FeatureOutput:
        stem_pre = self.bn1(self.conv1(x))
        f0 = F.relu(stem_pre)
        f1, p1 = _tv_stage(self.layer1, self.maxpool(f0))
        f2, p2 = _tv_stage(self.layer2, f1)
        f3, p3 = _tv_stage(self.layer3, f2)
        f4, p4 = _tv_stage(self.layer4, f3)
        pooled = torch.flatten(self.avgpool(f4), 1)
        logits = self.fc(pooled)
        return FeatureOutput(logits, [f0, f1, f2, f3, f4, pooled], [stem_pre, p1, p2, p3, p4, pooled])

    def _last_bns(self) -> list[nn.BatchNorm2d]:
        blocks = [layer[-1] for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]
        return [block.bn3 if hasattr(block, "bn3") else block.bn2 for block in blocks]

    def feature_channels(self) -> list[int]:
        return [self.bn1.num_features, *(bn.num_features for bn in self._last_bns()), self.fc.in_features]

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """Last BN of each stage's last block (4 modules, aligned with ``preact_feats[1:5]``;
        mdistiller's ImageNet ResNet returns only the last 3)."""
        return self._last_bns()


try:  # a named class for the common case (isinstance checks, readable tracebacks)
    import torchvision.models as _tvm

    class TorchvisionResNet(_TorchvisionResNetFeatures, _tvm.ResNet):
        """torchvision ``ResNet`` with the kdbench feature API."""

        _kd_mixin = _TorchvisionResNetFeatures
        _kd_base = _tvm.ResNet

    _SWAPPED[(_TorchvisionResNetFeatures, _tvm.ResNet)] = TorchvisionResNet
except ImportError:  # pragma: no cover - torchvision is a dependency
    TorchvisionResNet = None  # type: ignore[assignment,misc]


def _create_torchvision(name: str, num_classes: int, pretrained: bool | str, **kwargs) -> nn.Module:
    """``pretrained``: False, True (torchvision's ``"DEFAULT"`` weights) or a weights name such as
    ``"IMAGENET1K_V1"`` (the weights the KD papers of 2019-2022 used as ImageNet teachers)."""
    import torchvision.models as tvm

    available = tvm.list_models(module=tvm)
    if name not in available:
        raise _unknown("torchvision", name, ", ".join(available))
    model = tvm.get_model(name, weights=(pretrained if isinstance(pretrained, str) else "DEFAULT") if pretrained else None, num_classes=num_classes, **kwargs)
    if type(model) is tvm.ResNet:
        return _swap(model, _TorchvisionResNetFeatures, f"torchvision:{name}")
    return _swap(model, _NoFeatures, f"torchvision:{name}")


# --------------------------------------------------------------------------- timm

class _TimmFeatures(_ExternalMixin):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self._kd_base.forward_features(self, x))

    def forward_features(self, x: torch.Tensor) -> FeatureOutput:
        if not hasattr(self, "forward_intermediates"):
            raise NotImplementedError(f"{self._kd_spec} has no forward_intermediates; no features in kdbench")
        final, intermediates = self.forward_intermediates(x)
        pooled = self.forward_head(final, pre_logits=True)
        logits = self.get_classifier()(pooled)
        return FeatureOutput(logits, [*intermediates, pooled], None)

    def feature_channels(self) -> list[int]:
        pooled = getattr(self, "head_hidden_size", None) or self.num_features
        return [info["num_chs"] for info in self.feature_info] + [pooled]


def _create_timm(name: str, num_classes: int, pretrained: bool, **kwargs) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise _unknown("timm", name, "see timm.list_models()")
    model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    return _swap(model, _TimmFeatures, f"timm:{name}")


def create_external_model(spec: str, num_classes: int = 1000, pretrained: bool = False, **kwargs) -> nn.Module:
    """``spec`` is ``"torchvision:<name>"`` or ``"timm:<name>"``."""
    library, _, name = spec.partition(":")
    if library == "torchvision":
        return _create_torchvision(name, num_classes, pretrained, **kwargs)
    if library == "timm":
        return _create_timm(name, num_classes, pretrained, **kwargs)
    raise KeyError(f"unknown model library {library!r}; valid choices: torchvision, timm")
