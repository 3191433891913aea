"""ImageNet (ILSVRC-2012): ``torchvision.datasets.ImageFolder`` + the standard transforms + a DataLoader.

The images must be placed by hand (they cannot be downloaded automatically) as
``data_root()/imagenet/train/<wnid>/*.JPEG`` and ``data_root()/imagenet/val/<wnid>/*.JPEG``
(the validation images sorted into class folders, e.g. with the usual ``valprep.sh``).

Transforms: train ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip()``; val ``Resize(256)`` +
``CenterCrop(224)``; both ``ToTensor()`` + ``Normalize`` with the ImageNet mean/std. The loaders
yield ``(images, labels, indices)`` on ``device`` like :class:`kdbench.data.DeviceLoader`, and the
training loader reshuffles per ``set_epoch`` with a generator seeded from (seed, epoch).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from . import DATASETS, DatasetUnavailable, data_root
from .loader import epoch_generator


class IndexedDataset(torch.utils.data.Dataset):
    """Wraps a dataset so that item ``i`` is ``(image, label, i)``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image, label, index


class ImageNetLoader:
    """A DataLoader over an :class:`IndexedDataset` whose batches are moved to ``device``."""

    def __init__(self, dataset, *, batch_size: int, device, train: bool, workers: int, seed: int = 0,
                 drop_last: bool = False, channels_last: bool = False):
        self.dataset = IndexedDataset(dataset)
        self.device = torch.device(device)
        self.batch_size, self.train, self.workers, self.seed = batch_size, train, workers, seed
        self.drop_last, self.channels_last = drop_last, channels_last
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    @property
    def labels(self) -> torch.Tensor:
        """All labels in dataset order (ImageFolder keeps them in ``targets``), on the device."""
        return torch.as_tensor(self.dataset.dataset.targets, dtype=torch.int64, device=self.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    num_views = None  # RandomResizedCrop has no finite set of views: nothing can be cached per view

    def batches(self):
        """``(images, labels, indices, None)``: the same interface as :meth:`DeviceLoader.batches`."""
        for images, labels, indices in self:
            yield images, labels, indices, None

    def __iter__(self):
        cuda = self.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=self.train, drop_last=self.drop_last,
            num_workers=self.workers, pin_memory=cuda, persistent_workers=False,
            # seeds the order and the workers' augmentation streams: reproducible per (seed, epoch)
            generator=epoch_generator(self.seed, self.epoch) if self.train else None)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for images, labels, indices in loader:
            yield (images.to(self.device, non_blocking=cuda, memory_format=memory_format),
                   labels.to(self.device, non_blocking=cuda), indices.to(self.device, non_blocking=cuda))


def imagenet_folder(root=None) -> Path:
    """``root`` or ``data_root()/imagenet``, checked to hold ``train/`` and ``val/``."""
    folder = Path(root).expanduser() if root is not None else data_root() / "imagenet"
    missing = [s for s in ("train", "val") if not (folder / s).is_dir()]
    if missing:
        raise DatasetUnavailable(
            f"ImageNet is missing from {folder} (no {' or '.join(s + '/' for s in missing)}): it cannot be "
            f"downloaded automatically; place ILSVRC-2012 there as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG "
            f"(or set KDBENCH_DATA to a folder whose imagenet/ holds them)")
    return folder


def imagenet_loaders(root=None, batch_size: int = 256, workers: int | None = None, *, device="cpu", seed: int = 0,
                     test_batch_size: int | None = None, channels_last: bool = False, drop_last: bool = False):
    """``(train_loader, val_loader, num_classes)`` for ImageNet under ``root`` (default
    ``data_root()/imagenet``). ``workers`` defaults to min(8, CPU count)."""
    from torchvision import datasets, transforms
    folder = imagenet_folder(root)
    info = DATASETS["imagenet"]
    normalize = transforms.Normalize(info["mean"], info["std"])
    train_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    val_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize])
    train_set = datasets.ImageFolder(str(folder / "train"), transform=train_tf)
    val_set = datasets.ImageFolder(str(folder / "val"), transform=val_tf)
    if train_set.classes != val_set.classes:
        raise DatasetUnavailable(f"ImageNet under {folder}: train/ and val/ hold different class folders")
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    common = dict(device=device, workers=workers, channels_last=channels_last)
    train = ImageNetLoader(train_set, batch_size=batch_size, train=True, seed=seed, drop_last=drop_last, **common)
    val = ImageNetLoader(val_set, batch_size=test_batch_size or batch_size, train=False, **common)
    return train, val, len(train_set.classes)
