"""A tiny name -> builder registry (a plain dict, like timm's but small).

Canonical names are RepDistiller's ``model_dict`` keys (``resnet32x4``,
``ResNet50``, ``wrn_40_2``, ``vgg13``, ``MobileNetV2``, ``ShuffleV1``...).
Aliases map the spellings used in paper tables (``resnet50``,
``mobilenetv2``, ``mobile_half``, ``shufflev1``, ``vgg13_bn``...). Lookup is
exact first, then case-insensitive with ``-`` read as ``_`` (so ``WRN-40-2``
finds ``wrn_40_2``). Names of the form ``torchvision:<name>`` and
``timm:<name>`` build ImageNet-scale models through those libraries (see
:mod:`kdbench.models.imagenet`).
"""
from __future__ import annotations

from typing import Callable, Iterable, TypeVar

from torch import nn

__all__ = ["register_model", "list_models", "resolve_name", "create_model", "is_model"]

Builder = Callable[..., nn.Module]
_B = TypeVar("_B", bound=Builder)

_MODELS: dict[str, Builder] = {}
_ALIASES: dict[str, str] = {}
_NORMALISED: dict[str, str] = {}
EXTERNAL_PREFIXES = ("torchvision:", "timm:")


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _add_lookup(key: str, canonical: str) -> None:
    if key in _MODELS or key in _ALIASES:
        raise ValueError(f"model name {key!r} is already registered")
    n = _norm(key)
    if _NORMALISED.get(n, canonical) != canonical:
        raise ValueError(f"model name {key!r} clashes with {_NORMALISED[n]!r}")
    _NORMALISED[n] = canonical


def register_model(fn: _B | str | None = None, *, aliases: Iterable[str] = ()):
    """Register a builder ``fn(num_classes=..., **kwargs) -> nn.Module``.

    Usable bare (``@register_model``: the function name is the model name) or
    with a name and aliases (``@register_model("vgg8", aliases=["vgg8_bn"])``).
    """
    def decorate(builder: _B, name: str | None = None) -> _B:
        canonical = name or builder.__name__
        _add_lookup(canonical, canonical)
        _MODELS[canonical] = builder
        for alias in aliases:
            _add_lookup(alias, canonical)
            _ALIASES[alias] = canonical
        return builder

    if callable(fn):
        return decorate(fn)
    return lambda builder: decorate(builder, fn)


def list_models() -> list[str]:
    """Canonical names of the zoo, in registration order (aliases excluded)."""
    return list(_MODELS)


def _choices() -> str:
    return ", ".join(_MODELS) + ", or 'torchvision:<name>' / 'timm:<name>'"


def resolve_name(name: str) -> str:
    """Canonical zoo name for ``name`` (canonical, alias or case/dash variant).

    ``torchvision:<name>`` / ``timm:<name>`` specs are returned unchanged (they are
    validated by :func:`create_model`). Anything else raises ``KeyError`` with a
    one-line message naming the valid choices.
    """
    if isinstance(name, str) and name.startswith(EXTERNAL_PREFIXES):
        return name
    if name in _MODELS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    canonical = _NORMALISED.get(_norm(name)) if isinstance(name, str) else None
    if canonical is None:
        raise KeyError(f"unknown model {name!r}; valid choices: {_choices()}")
    return canonical


def is_model(name: str) -> bool:
    try:
        resolve_name(name)
    except KeyError:
        return False
    return True


def create_model(name: str, num_classes: int = 100, **kwargs) -> nn.Module:
    """Build a model by name.

    Zoo models (``list_models()`` plus aliases) are randomly initialised exactly
    like the official code; load a published checkpoint with
    ``model.load_state_dict(torch.load(path, weights_only=True)["model"])``.
    ``torchvision:<name>`` / ``timm:<name>`` accept ``pretrained=True`` (weights
    ``"DEFAULT"`` / timm ``pretrained=True``: downloads) and pass other keyword
    arguments to the library's builder.

    Unknown names raise ``KeyError`` whose message is one line naming the choices.
    """
    if isinstance(name, str) and name.startswith(EXTERNAL_PREFIXES):
        from .imagenet import create_external_model

        return create_external_model(name, num_classes=num_classes, **kwargs)
    builder = _MODELS[resolve_name(name)]
    if kwargs.pop("pretrained", False):
        raise ValueError(
            f"zoo model {name!r} has no built-in pretrained weights: create it with pretrained=False "
            "and load the teacher checkpoint's 'model' state dict")
    return builder(num_classes=num_classes, **kwargs)
