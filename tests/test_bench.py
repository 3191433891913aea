"""pytest-benchmark of one KD training step (``make bench`` enables timing; ``make test`` runs it once)."""
import torch

from kdbench.bench import make_step


def test_kd_training_step(benchmark):
    step, info = make_step("resnet20-resnet8", batch_size=64, device="cpu")
    benchmark.extra_info.update(info)
    loss = benchmark(step)
    assert torch.isfinite(loss)
