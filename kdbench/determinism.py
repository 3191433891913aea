"""``--deterministic``: the settings PyTorch documents for reproducible GPU runs (docs: "Reproducibility").

On the CPU a run is already deterministic: the same seed and config give the same weights and metrics
bit for bit (``tests/test_resume.py``). On CUDA several kernels are not (atomic adds in backward passes,
cuDNN's benchmark picking a different algorithm per process, cuBLAS's split reductions); this turns them
off:

* ``torch.use_deterministic_algorithms(True)``: deterministic kernels, and an error naming the operation
  where PyTorch has none (the run then stops; without the flag it runs, non-deterministically);
* ``torch.backends.cudnn.deterministic = True`` and ``torch.backends.cudnn.benchmark = False``
  (:func:`kdbench.reproduce.run_one` leaves benchmark off);
* ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in the environment, which cuBLAS reads when the CUDA context is
  created: so it is set when the command line is parsed, before anything touches CUDA; child processes
  (``--parallel``) inherit it.

It is a setting of the process, not of the recipe: the config (and its digest) does not change, and the
results record notes ``"deterministic": true | false``. Deterministic kernels are often slower.
"""
from __future__ import annotations

import os

import torch

CUBLAS = ":4096:8"


def enable() -> None:
    """Turn the deterministic settings on for this process (before CUDA is initialised)."""
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            raise RuntimeError("deterministic mode must be enabled before CUDA is initialised "
                               "(or with CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment)")
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def enabled() -> bool:
    return torch.are_deterministic_algorithms_enabled()
