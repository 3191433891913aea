"""Tabular datasets: a float feature matrix held on the device, served like the image loaders.

The datasets are the ones scikit-learn ships inside its package (read from the installed files,
never downloaded): ``breast-cancer`` is ``sklearn.datasets.load_breast_cancer`` (569 tumours,
30 continuous attributes, binary: 212 malignant = 0, 357 benign = 1).

* **Split** -- there is no official split, so ours is fixed: per class, the examples are permuted
  by a NumPy generator seeded with ``split_seed`` and the first ``round(test_fraction * n_class)``
  go to the test set (stratified, deterministic, the same on every machine); both splits keep
  file order. ``breast-cancer``: 456 training and 113 test examples (42 + 71 of 212 + 357).
* **Normalisation** -- every attribute is standardised with the mean and standard deviation of
  the *training* split (population std; a constant attribute gets std 1), the test split with the
  same statistics.
* **Loader** -- :class:`TabularLoader` has the interface the trainer uses of
  :class:`kdbench.data.loader.DeviceLoader`: ``batches()`` yields ``(x, labels, indices, views)``,
  iterating yields ``(x, labels, indices)``, ``set_epoch``, ``len``, ``num_samples``, ``labels``,
  ``num_views``. ``x`` is ``B x F`` float; a training epoch's order is ``torch.randperm`` from the
  same ``(seed, epoch)`` generator as the image loader; there is no augmentation, so every sample
  has one view (``views`` all 0: the teacher-logit cache is exact). A model for these inputs
  flattens them, so the profiling code's ``B x F x 1 x 1`` dummy input (``channels = F``,
  ``image_size = 1`` in ``DATASETS``) is the same thing.
"""
from __future__ import annotations

import numpy as np
import torch

from .loader import EpochBatches, epoch_generator

# name -> the scikit-learn loader (bundled data) and our fixed split
TABULAR: dict[str, dict] = {
    "breast-cancer": {"loader": "load_breast_cancer", "test_fraction": 0.2, "split_seed": 0},
}


def _raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole dataset as shipped: float64 ``N x F`` attributes, int64 labels."""
    try:
        spec = TABULAR[name]
    except KeyError:
        raise KeyError(f"unknown tabular dataset {name!r}; choose from: {', '.join(sorted(TABULAR))}") from None
    import sklearn.datasets
    x, y = getattr(sklearn.datasets, spec["loader"])(return_X_y=True)
    return np.asarray(x, np.float64), np.asarray(y, np.int64)


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions: per class a seeded permutation, its first ``round(f * n_c)`` to test;
    both returned in increasing (file) order."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test.append(rng.permutation(members)[: round(test_fraction * len(members))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def load_tabular(name: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """The train (else test) split of ``name``, unnormalised: float64 ``N x F``, int64 ``N``."""
    x, y = _raw(name)
    spec = TABULAR[name]
    tr, te = split_indices(y, spec["test_fraction"], spec["split_seed"])
    keep = tr if train else te
    return x[keep], y[keep]


def train_statistics(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-attribute mean and std (population) of the training split; std 1 for a constant attribute."""
    x, _ = load_tabular(name, True)
    mean, std = x.mean(0), x.std(0)
    return mean, np.where(std > 0, std, 1.0)


def standardise(name: str, x: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` with the training statistics of ``name``."""
    mean, std = train_statistics(name)
    return (np.asarray(x, np.float64) - mean) / std


class TabularLoader(EpochBatches):
    """``(x, labels, indices[, views])`` batches of a float feature matrix held on ``device``.

    Args:
        features: ``N x F`` (already normalised); labels: ``N`` integer labels.
        raw: the same examples before normalisation (``raw_inputs``, kept on the CPU), if known.
        batch_size: samples per batch; the last short batch is kept unless ``drop_last``.
        train: shuffle each epoch (order from ``(seed, epoch)``); else file order.
        shard: ``(rank, world)``: process r of N takes epoch positions r, r + N, ... (as DeviceLoader).
    """

    def __init__(self, features, labels, *, batch_size: int, device, train: bool, seed: int = 0,
                 drop_last: bool = False, dtype: torch.dtype = torch.float32, shard: tuple[int, int] = (0, 1),
                 raw=None):
        features = torch.as_tensor(features)
        labels = torch.as_tensor(labels)
        if features.dim() != 2 or not features.is_floating_point():
            raise ValueError(f"features must be a float N x F matrix, got {features.dtype} {tuple(features.shape)}")
        if labels.shape != features.shape[:1]:
            raise ValueError(f"{len(labels)} labels for {len(features)} examples")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size, self.train, self.seed = int(batch_size), bool(train), int(seed)
        self.drop_last = bool(drop_last)
        self.rank, self.world = shard
        self.epoch = 0
        self.num_samples, self.num_features = features.shape
        self.features = features.to(self.device, dtype).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        self.raw_inputs = None if raw is None else torch.as_tensor(raw)
        if self.raw_inputs is not None and self.raw_inputs.shape != features.shape:
            raise ValueError(f"raw inputs {tuple(self.raw_inputs.shape)} do not match features {tuple(features.shape)}")

    num_views = 1  # no augmentation: one view per sample

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """This process's sample order for an epoch (training: a seeded permutation, then its shard)."""
        if not self.train:
            return torch.arange(self.num_samples)
        g = epoch_generator(self.seed, self.epoch if epoch is None else epoch)
        order = torch.randperm(self.num_samples, generator=g)
        if self.world > 1:
            order = order[torch.arange(self.rank, self.world * self._epoch_length(), self.world)]
        return order

    def __iter__(self):
        for x, labels, idx, _ in self.batches():
            yield x, labels, idx

    def batches(self):
        """``(x, labels, indices, views)``; ``views`` is all zeros in training (one view), None in test."""
        n, bs = self._epoch_length(), self.batch_size
        stop = (n // bs) * bs if self.drop_last else n
        order = self.order().to(self.device)
        for start in range(0, stop, bs):
            idx = order[start:min(start + bs, stop)]
            views = torch.zeros_like(idx) if self.train else None
            yield self.features[idx], self.labels[idx], idx, views

    def __repr__(self) -> str:
        return (f"TabularLoader(n={self.num_samples}, features={self.num_features}, batch_size={self.batch_size}, "
                f"train={self.train}, device={self.device}, epoch={self.epoch}, seed={self.seed})")


def tabular_loaders(name: str, *, batch_size: int, device, seed: int = 0, test_batch_size: int | None = None,
                    drop_last: bool = False, dtype=None, shard: tuple[int, int] = (0, 1)):
    """``(train_loader, test_loader, num_classes)`` of a tabular dataset, standardised with the
    training split's statistics."""
    dtype = torch.float32 if dtype is None else dtype
    loaders = []
    for train in (True, False):
        x, y = load_tabular(name, train)
        loaders.append(TabularLoader(torch.from_numpy(standardise(name, x)), torch.from_numpy(y),
                                     batch_size=batch_size if train else (test_batch_size or batch_size),
                                     device=device, train=train, seed=seed, drop_last=drop_last and train,
                                     dtype=dtype, shard=shard if train else (0, 1), raw=torch.from_numpy(x)))
    _, y = _raw(name)
    return loaders[0], loaders[1], int(y.max()) + 1


__all__ = ["TABULAR", "TabularLoader", "load_tabular", "split_indices", "standardise", "tabular_loaders",
           "train_statistics"]
