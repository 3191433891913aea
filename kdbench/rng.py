"""The state of every random generator a run draws from, as plain tensors, numbers and strings.

An epoch checkpoint holds this next to the weights, so a resumed run draws the same numbers as an
uninterrupted one: dropout, a method's noise (noisy teachers), CRD's negative sampling, anything that
calls ``torch.rand*``, ``random`` or ``numpy.random`` during a step. The data order and augmentation
need nothing here: the loaders draw them from a generator seeded with (seed, epoch)
(:mod:`kdbench.data.loader`).

Captured: Python's ``random``, NumPy's legacy global generator, torch's CPU generator, the generator of
the current CUDA device when CUDA is initialised (one device per process, as kdbench runs: under torchrun
every process restores its own device's generator from process 0's state, which equals its own because
every process is seeded alike and draws alike), and every generator a method owns as an attribute of one
of its modules (``torch.Generator``, ``numpy.random.Generator`` / ``RandomState``, ``random.Random``).
Everything is stored so that :func:`kdbench.checkpoint.load` (``weights_only=True``) reads it back:
NumPy's Mersenne-Twister keys as an int64 tensor, a NumPy ``Generator``'s bit-generator state as JSON.
"""
from __future__ import annotations

import json
import random

import numpy as np
import torch
from torch import nn


def _python(state) -> dict:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_state(saved: dict):
    return saved["version"], tuple(int(x) for x in saved["internal"].tolist()), saved["gauss"]


def _mt19937(state) -> dict:
    name, keys, pos, has_gauss, gauss = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _mt19937_state(saved: dict):
    return (saved["name"], saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"],
            saved["gauss"])


def _owned(owner: nn.Module | None):
    """``("module.path.attribute", generator)`` for every generator held by a module of ``owner``."""
    if owner is None:
        return
    for prefix, module in owner.named_modules():
        for name, value in vars(module).items():
            if isinstance(value, (torch.Generator, np.random.Generator, np.random.RandomState, random.Random)):
                yield f"{prefix}.{name}" if prefix else name, value


def _save_owned(gen) -> dict:
    if isinstance(gen, torch.Generator):
        return {"kind": "torch", "state": gen.get_state()}
    if isinstance(gen, np.random.Generator):
        return {"kind": "numpy", "state": json.dumps(gen.bit_generator.state, default=lambda a: a.tolist())}
    if isinstance(gen, np.random.RandomState):
        return {"kind": "randomstate", "state": _mt19937(gen.get_state())}
    return {"kind": "python", "state": _python(gen.getstate())}


def _load_owned(gen, saved: dict) -> None:
    kind, state = saved["kind"], saved["state"]
    if kind == "torch":
        gen.set_state(state)
    elif kind == "numpy":
        gen.bit_generator.state = json.loads(state)
    elif kind == "randomstate":
        gen.set_state(_mt19937_state(state))
    else:
        gen.setstate(_python_state(state))


def capture(owner: nn.Module | None = None) -> dict:
    """The state of every generator (see the module docstring); ``owner``: the module whose own
    generators are included (the distiller)."""
    state = {"python": _python(random.getstate()), "numpy": _mt19937(np.random.get_state()),
             "torch": torch.get_rng_state(),
             "owned": {name: _save_owned(gen) for name, gen in _owned(owner)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore(state: dict, owner: nn.Module | None = None) -> None:
    """Set every generator to ``state`` (from :func:`capture`). A generator ``owner`` holds but the state
    lacks (or the reverse) is an error: the run would otherwise silently draw other numbers."""
    random.setstate(_python_state(state["python"]))
    np.random.set_state(_mt19937_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    owned = dict(_owned(owner))
    if set(owned) != set(state["owned"]):
        raise RuntimeError(f"the checkpoint holds the generators {sorted(state['owned'])} but the method "
                           f"owns {sorted(owned)}")
    for name, gen in owned.items():
        _load_owned(gen, state["owned"][name])
