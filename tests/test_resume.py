"""Kill and resume: the state of every random generator a run draws from survives a checkpoint."""
import random

import numpy as np
import pytest
import torch
from torch import nn

from kdbench import checkpoint, rng


class Owner(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Module()
        self.inner.gen = torch.Generator().manual_seed(1)
        self.np_gen, self.legacy, self.py = np.random.default_rng(2), np.random.RandomState(3), random.Random(4)


def draws(owner: Owner) -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(2).tolist(),
            torch.rand(1, generator=owner.inner.gen).item(), owner.np_gen.random(), owner.legacy.randn(),
            owner.py.random())


def test_every_generator_round_trips_through_a_weights_only_checkpoint(tmp_path):
    owner = Owner()
    random.gauss(0, 1), np.random.randn(), owner.legacy.randn()  # leave cached Gaussians in the states
    checkpoint.atomic_save({"rng": rng.capture(owner)}, tmp_path / "c.pt")
    expected = draws(owner)
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    fresh = Owner()
    assert draws(fresh) != expected
    rng.restore(checkpoint.load(tmp_path / "c.pt")["rng"], fresh)  # checkpoint.load: weights_only=True
    assert draws(fresh) == expected
    with pytest.raises(RuntimeError, match="generators"):
        rng.restore(checkpoint.load(tmp_path / "c.pt")["rng"], nn.Module())
