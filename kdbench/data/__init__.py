"""The data layer: where datasets live, what they are, and how they are read.

* ``data_root()`` -- ``$KDBENCH_DATA`` or ``~/.cache/kdbench/data``; every dataset is a folder in it
  (``cifar100/``, ``cifar10/``, ``mnist/``, ``synthetic-cifar100/``, ``synthetic-cifar10/``,
  ``synthetic-mnist/``, ``imagenet/``); the tabular datasets (``breast-cancer``) are scikit-learn's
  bundled files and need no folder (see :mod:`kdbench.data.tabular`).
* ``DATASETS`` -- per name: ``num_classes``, ``mean``, ``std`` (normalisation, per channel in [0, 1]),
  ``channels``, ``image_size``, ``layout`` (on-disk format), ``synthetic``, and for the small-image
  datasets the default training augmentation: ``padding`` (random crop of the zero-padded image, i.e.
  a random translation by up to ``padding`` pixels) and ``flip`` (random horizontal flip).
* ``load_split(name, train)`` -- the whole split as (uint8 N x C x H x W, int64 labels) tensors.
  Real and synthetic data are written in the same on-disk format and go through the same reader
  (:func:`kdbench.data.cifar.read_split`, :func:`kdbench.data.mnist.read_split`).
* ``make_loaders(name, ...)`` -- device-resident train/test loaders (:class:`DeviceLoader`) that
  yield ``(images, labels, indices)``; ImageNet gets a standard DataLoader with the same interface.
"""
from __future__ import annotations

import os
from pathlib import Path


from ..errors import Unavailable


class DatasetUnavailable(Unavailable):
    """A dataset is not on disk and cannot be obtained; the message is one line saying what to do."""


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first: what a download into
    ``folder`` creates, and :func:`remove_empty` removes again if it fails."""
    folder = Path(folder)
    return [p for p in (folder, *folder.parents) if not p.exists()]


def remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that are empty: a failed download leaves nothing."""
    for path in folders:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def data_root() -> Path:
    """``$KDBENCH_DATA`` if set (and non-empty), else ``~/.cache/kdbench/data``."""
    env = os.environ.get("KDBENCH_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "kdbench" / "data"


# mean/std: CIFAR-100 as in the official CRD (RepDistiller) and DKD (mdistiller) code; CIFAR-10 the
# usual per-channel statistics of its training set; MNIST the usual statistics of its training set
# (0.1307, 0.3081: the values of PyTorch's MNIST example); ImageNet torchvision's. A synthetic set uses
# the statistics of the dataset it imitates, so a model and its normalisation transfer unchanged.
# padding/flip: the default training augmentation, RandomCrop(32, padding=4) + horizontal flip for
# CIFAR (the CRD/DKD recipe), none for MNIST (digits are not mirror-symmetric); a preset's ``augment``
# replaces them.
_CIFAR = {"channels": 3, "image_size": 32, "padding": 4, "flip": True}
_CIFAR100 = {"num_classes": 100, "mean": (0.5071, 0.4867, 0.4408), "std": (0.2675, 0.2565, 0.2761),
             "layout": "cifar100", **_CIFAR}
_CIFAR10 = {"num_classes": 10, "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616),
            "layout": "cifar10", **_CIFAR}
_MNIST = {"num_classes": 10, "mean": (0.1307,), "std": (0.3081,), "channels": 1, "image_size": 28,
          "layout": "mnist", "padding": 0, "flip": False}
DATASETS: dict[str, dict] = {
    "cifar100": {**_CIFAR100, "synthetic": False},
    "cifar10": {**_CIFAR10, "synthetic": False},
    "mnist": {**_MNIST, "synthetic": False},
    "synthetic-cifar100": {**_CIFAR100, "synthetic": True},
    "synthetic-cifar10": {**_CIFAR10, "synthetic": True},
    "synthetic-mnist": {**_MNIST, "synthetic": True},
    "imagenet": {"num_classes": 1000, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                 "channels": 3, "image_size": 224, "layout": "imagefolder", "synthetic": False},
    # tabular (kdbench.data.tabular): scikit-learn's bundled data, standardised with the training split's
    # own statistics (mean/std None here); the F attributes are the channels of a 1 x 1 "image"
    "breast-cancer": {"num_classes": 2, "mean": None, "std": None, "channels": 30, "image_size": 1,
                      "layout": "tabular", "synthetic": False},
}
SMALL_LAYOUTS = ("cifar100", "cifar10", "mnist")  # read whole into memory, served by DeviceLoader


def dataset_info(name: str) -> dict:
    """``DATASETS[name]``; an unknown name is a one-line ``KeyError`` naming the valid choices."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown dataset {name!r}; choose from: {', '.join(sorted(DATASETS))}") from None


from .cifar import load_cifar  # noqa: E402  (the modules above import data_root/DatasetUnavailable)
from .loader import DeviceLoader  # noqa: E402
from .mnist import load_mnist  # noqa: E402
from .synthetic import load_synthetic  # noqa: E402
from .synthetic_mnist import load_synthetic_mnist  # noqa: E402

SUBSET_KEYS = ("train_per_class", "test_per_class")
SAMPLERS = ("random", "same_class_pairs")


def _check_subset(subset: dict | None) -> dict:
    subset = dict(subset or {})
    unknown = set(subset) - set(SUBSET_KEYS)
    if unknown:
        raise ValueError(f"unknown subset option(s) {sorted(unknown)}; valid: {', '.join(SUBSET_KEYS)}")
    for key, value in subset.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"subset option {key} must be a positive integer, got {value!r}")
    return {k: v for k, v in subset.items() if v is not None}


def _per_class(labels, n: int):
    """Positions of the first ``n`` samples of every class, in file order (deterministic, balanced)."""
    import torch
    order = torch.argsort(labels, stable=True)  # grouped by class, file order inside a class
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.arange(labels.numel()) - starts
    return torch.sort(order[rank < n]).values


def load_split(name: str, train: bool, root=None, download: bool = True, subset: dict | None = None):
    """The ``train`` (else test) split of ``name`` as ``(images, labels)``.

    images: uint8 ``N x C x H x W`` (contiguous, CPU; 3 x 32 x 32 for CIFAR, 1 x 28 x 28 for MNIST);
    labels: int64 ``N``. ``root`` replaces ``data_root()`` (the folder that holds ``cifar100/`` etc.). ``download`` lets a missing real
    dataset be downloaded (else :class:`DatasetUnavailable`). ``subset`` -- ``{"train_per_class": n,
    "test_per_class": m}`` -- keeps the first n (m) samples of every class in file order; for a
    synthetic dataset it instead sets the generated size (see :mod:`kdbench.data.synthetic`).
    """
    info = dataset_info(name)
    subset = _check_subset(subset)
    root = Path(root).expanduser() if root is not None else data_root()
    if info["layout"] not in SMALL_LAYOUTS:
        raise ValueError(f"load_split reads the CIFAR- and MNIST-format datasets; use make_loaders({name!r}, ...) "
                         f"for {name}")
    if info["synthetic"]:
        if info["layout"] == "mnist":
            return load_synthetic_mnist(train, root=root, **subset)
        return load_synthetic(name, train, root=root, **subset)
    if info["layout"] == "mnist":
        images, labels = load_mnist(train, root=root, download=download)
    else:
        images, labels = load_cifar(name, train, root=root, download=download)
    per_class = subset.get("train_per_class" if train else "test_per_class")
    if per_class is not None:
        keep = _per_class(labels, per_class)
        images, labels = images[keep].contiguous(), labels[keep].contiguous()
    return images, labels


def make_loaders(name: str, *, batch_size: int, device, seed: int = 0, test_batch_size: int | None = None,
                 root=None, download: bool = True, channels_last: bool = False, subset: dict | None = None,
                 dtype=None, drop_last: bool = False, workers: int | None = None,
                 synthetic: dict | None = None, augment: dict | None = None, shard: tuple[int, int] = (0, 1),
                 sampler: str = "random"):
    """``(train_loader, test_loader, num_classes)`` for ``name`` on ``device``.

    Both loaders yield ``(images, labels, indices)`` on ``device``; call ``train_loader.set_epoch(e)``
    before iterating epoch ``e``. ``test_batch_size`` defaults to ``batch_size``. ``subset``: see
    :func:`load_split` (``synthetic=`` is accepted as an alias of it). ``workers`` only matters for
    ImageNet (CPU decoding); the CIFAR/MNIST loaders have no workers. ``augment`` -- ``{"mean", "std",
    "padding_mode", "padding", "flip", "rotation"}`` -- replaces the dataset's normalisation and training
    augmentation (a paper's own transform; ``DATASETS`` holds the defaults); CIFAR/MNIST formats only.
    ``sampler``: ``"random"`` (shuffled batches) or ``"same_class_pairs"`` (every sample followed by a
    random sample of its class, see :class:`DeviceLoader`; CS-KD).
    """
    import torch
    info = dataset_info(name)
    if synthetic is not None:
        if subset is not None:
            raise ValueError("pass subset= or its alias synthetic=, not both")
        subset = synthetic
    dtype = torch.float32 if dtype is None else dtype
    test_batch_size = test_batch_size or batch_size
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from: {', '.join(SAMPLERS)}")
    if info["layout"] == "tabular":
        if subset or augment or sampler != "random":
            raise ValueError(f"{name} is tabular: it has no subset, augment or sampler options")
        from .tabular import tabular_loaders
        train_loader, test_loader, _ = tabular_loaders(name, batch_size=batch_size, device=device, seed=seed,
                                                       test_batch_size=test_batch_size, drop_last=drop_last,
                                                       dtype=dtype, shard=shard)
        return train_loader, test_loader, info["num_classes"]
    if info["layout"] == "imagefolder":
        if sampler != "random":
            raise ValueError(f"sampler {sampler!r} is implemented for the CIFAR/MNIST-format datasets, not {name}")
        if augment:
            raise ValueError(f"augment options apply to the CIFAR- and MNIST-format datasets, not {name}")
        if shard != (0, 1):
            raise ValueError("multi-process runs read CIFAR/MNIST-format datasets only (ImageNet: not yet)")
        from .imagenet import imagenet_loaders
        return imagenet_loaders(root=None if root is None else Path(root) / name, batch_size=batch_size,
                                workers=workers, device=device, seed=seed, test_batch_size=test_batch_size,
                                channels_last=channels_last, drop_last=drop_last)
    augment = dict(augment or {})
    common = dict(device=device, mean=augment.pop("mean", info["mean"]), std=augment.pop("std", info["std"]),
                  channels_last=channels_last, dtype=dtype)
    crop = dict(padding_mode=augment.pop("padding_mode", "zeros"), padding=augment.pop("padding", info["padding"]),
                flip=augment.pop("flip", info["flip"]), rotation=augment.pop("rotation", 0.0))
    if augment:
        raise ValueError(f"unknown augment option(s) {sorted(augment)}; "
                         "valid: mean, std, padding_mode, padding, flip, rotation")
    x, y = load_split(name, True, root=root, download=download, subset=subset)
    train_loader = DeviceLoader(x, y, batch_size=batch_size, train=True, seed=seed, drop_last=drop_last,
                                shard=shard, same_class_pairs=sampler == "same_class_pairs", **crop, **common)
    x, y = load_split(name, False, root=root, download=download, subset=subset)
    test_loader = DeviceLoader(x, y, batch_size=test_batch_size, train=False, **common)
    return train_loader, test_loader, info["num_classes"]


__all__ = ["DATASETS", "DatasetUnavailable", "DeviceLoader", "SUBSET_KEYS", "data_root", "dataset_info",
           "load_split", "make_loaders"]
