"""Determinism: the same seed and config give the same run bit for bit on the CPU; ``--deterministic``
switches on what PyTorch documents for CUDA and the record says whether it was on."""
import json
import os

import pytest
import torch

from kdbench import checkpoint
from kdbench.cli import main

ARGS = ["reproduce", "noisy_teachers", "--preset", "smoke", "--set", "train.epochs=2", "--set", "teacher_train.epochs=1",
        "--set", "data_subset.train_per_class=10", "--set", "data_subset.test_per_class=5", "--latency-iters", "2"]
RUN = "noisy_teachers/smoke/mlp_1200_1200-mlp_800_800"


@pytest.fixture
def restore_determinism(monkeypatch):
    """The settings are global to the process: put them back for the other tests."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:]


def reproduce(root, monkeypatch, *extra):
    """One run with its own data (so its teacher is trained too), runs and results folders."""
    for var, sub in (("KDBENCH_DATA", "data"), ("KDBENCH_RUNS", "runs"), ("KDBENCH_RESULTS", "results")):
        monkeypatch.setenv(var, str(root / sub))
    assert main([*ARGS, *extra]) == 0
    record = json.loads((root / "results" / RUN / "seed0.json").read_text())
    return record, checkpoint.load(root / "runs" / RUN / "seed0" / "checkpoint-main.pt")


def assert_same(a, b):
    (rec_a, ckpt_a), (rec_b, ckpt_b) = a, b
    for key in ("best_top1", "best_epoch", "last_top1", "last_top5", "teacher_cache"):
        assert rec_a[key] == rec_b[key], key
    assert rec_a["teacher_info"]["sha256"] == rec_b["teacher_info"]["sha256"]  # the trained teachers too
    assert ckpt_a["model"].keys() == ckpt_b["model"].keys()
    assert all(torch.equal(ckpt_a["model"][k], ckpt_b["model"][k]) for k in ckpt_a["model"])
    losses = [[{k: v for k, v in h.items() if k.startswith(("loss", "test"))}
               for h in c["trainer"]["history"]] for c in (ckpt_a, ckpt_b)]
    assert losses[0] == losses[1]


def test_same_seed_same_run_and_the_deterministic_flag(tmp_path, monkeypatch, restore_determinism, one_thread_module):
    first = reproduce(tmp_path / "a", monkeypatch)
    assert first[0]["deterministic"] is False and not torch.are_deterministic_algorithms_enabled()
    assert_same(first, reproduce(tmp_path / "b", monkeypatch))

    flagged = reproduce(tmp_path / "c", monkeypatch, "--deterministic")
    # the CUDA side (cuBLAS workspace, cuDNN kernels) cannot run on this CPU-only test machine: what is checked
    # is that the flag sets what PyTorch documents, before any CUDA context, and that the record says so
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic is True and torch.backends.cudnn.benchmark is False
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert flagged[0]["deterministic"] is True
    assert flagged[0]["config"] == first[0]["config"]  # a setting of the process, not of the recipe
    assert_same(first, flagged)  # on the CPU the kernels were deterministic already

    from kdbench.config import resolve
    from kdbench.parallel import child_command
    from kdbench.registry import get_paper
    cfg = resolve("noisy_teachers", get_paper("noisy_teachers").spec, "smoke", "mlp_1200_1200-mlp_800_800", 0)
    assert "--deterministic" in child_command(cfg, device=None, overrides=[], resume=False, results_dir=None,
                                              latency_iters=2)  # runs side by side inherit it
