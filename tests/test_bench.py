"""``kdbench bench``: both pipelines run the same step and report comparable figures (no thresholds);
a pytest-benchmark of kdbench's step (``make bench`` enables timing; ``make test`` runs it once)."""
import json

import torch

from kdbench.bench import _models, bench, reference_pipeline
from kdbench.data import make_loaders
from kdbench.distiller import StepContext
from kdbench.train import train_step


def test_bench_prints_both_pipelines_and_their_ratio(sandbox, capsys):
    out = bench(pair="resnet8-resnet8", batch_size=16, steps=2, device="cpu", as_json=True,
                dataset="synthetic-cifar100", workers=0)
    printed = json.loads(capsys.readouterr().out)
    assert printed == out
    assert {"pair", "batch_size", "device", "kdbench_img_s", "reference_img_s", "ratio"} <= set(out)
    assert out["kdbench_img_s"] > 0 and out["reference_img_s"] > 0
    assert abs(out["ratio"] - out["kdbench_img_s"] / out["reference_img_s"]) < 1e-9
    assert out["precision"] == "fp32" and out["channels_last"] is False  # CPU: the preset's resolution
    assert out["kdbench_cached_img_s"] > 0 and "ratio_cached_240_epochs" in out


def test_amortised_cache_throughput():
    from kdbench.bench import amortised_cached_img_s
    # teacher 3/4 of a live step: live 100 img/s, steady state 400 img/s; 240 epochs draw ~125.1 views
    distinct = 162 * (1 - (161 / 162) ** 240)
    expected = 1 / (1 / 400 + (1 / 100 - 1 / 400) * distinct / 240)
    assert amortised_cached_img_s(100.0, 400.0) == expected and 100 < expected < 400
    assert amortised_cached_img_s(100.0, 100.0) == 100.0


def test_reference_reads_the_data_through_torchvision_with_workers(sandbox):
    ref = reference_pipeline("resnet8-resnet8", 8, torch.device("cpu"), "synthetic-cifar100", workers=1, steps=1,
                             warmup=1)
    assert ref["workers"] == 1 and ref["img_s"] > 0


def test_kd_training_step(benchmark, sandbox):
    device = torch.device("cpu")
    distiller, opt = _models("resnet20-resnet8", device, torch.contiguous_format)
    loader, _, _ = make_loaders("synthetic-cifar100", batch_size=64, device=device, subset={"train_per_class": 2})
    loader.set_epoch(1)
    images, labels, _ = next(iter(loader))
    ctx = StepContext(epoch=1, epochs=1)
    losses = benchmark(lambda: train_step(distiller, opt, images, labels, ctx, amp=False))
    assert all(torch.isfinite(v) for v in losses.values())


def test_recorded_bench_feeds_the_performance_page(sandbox):
    from kdbench.leaderboard import build
    from kdbench.performance import load_bench, record_bench
    from kdbench.sweep import model_macs
    out = {"pair": "resnet20-resnet8", "batch_size": 64, "device": "fixture-cpu", "threads": 2, "precision": "fp32",
           "kdbench_img_s": 100.0, "reference_img_s": 50.0, "reference_workers": 2, "ratio": 2.0,
           "kdbench_cached_img_s": 400.0, "kdbench_cached_240_epochs_img_s": 200.0, "ratio_cached_240_epochs": 4.0}
    path = record_bench(out, sandbox / "results")
    assert path.name == "fixture-cpu-resnet20-resnet8-b64.json" and load_bench(sandbox / "results")[0]["git_commit"]
    build(sandbox / "results", sandbox / "lb")
    page = (sandbox / "lb" / "performance.md").read_text()
    assert "| fixture-cpu | resnet20-resnet8 | 64 | 2 | fp32 | 100.0 | 50.0 (2) | 2.00 | 400.0 | 200.0 | 4.00 |" in page
    one_run_h = 50_000 * 240 / 100.0 / 3600
    assert f"| fixture-cpu | resnet20-resnet8 | {one_run_h:.1f} | {one_run_h / 2:.1f} |" in page
    assert model_macs("resnet20", 32, 100) > 0 and "PMAC" in page
