"""Evaluation: top-1/top-5, parameters, MACs (torch's FlopCounterMode), latency."""
from __future__ import annotations

import contextlib
import platform
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@torch.no_grad()
def accuracy(model: nn.Module, loader, *, amp: bool = False) -> dict:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of ``model`` over ``loader``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct1 = torch.zeros((), device=device)
    correct5 = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device)
    n = 0
    for images, labels, _ in loader:
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5.eq(labels[:, None])
        correct1 += hits[:, 0].sum()
        correct5 += hits.any(dim=1).sum()
        n += labels.numel()
    model.train(was_training)
    return {"top1": 100.0 * correct1.item() / n, "top5": 100.0 * correct5.item() / n, "loss": loss_sum.item() / n}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape=(1, 3, 32, 32)) -> int:
    """Multiply-accumulates of one forward pass, from torch's FlopCounterMode (FLOPs / 2)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(input_shape, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2 // input_shape[0]


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's architecture, the vector instruction set PyTorch's kernels use on it
    (``AVX512``, ``AVX2``, ...: it changes float rounding, so CPUs that differ in it train a short smoke
    run to different numbers) and the thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (f"cpu:{platform.processor() or platform.machine()} {torch.backends.cpu.get_cpu_capability()} "
            f"({torch.get_num_threads()} threads)")


@torch.no_grad()
def latency(model: nn.Module, *, batch_size: int = 1, image_size: int = 32, warmup: int = 10,
            iters: int = 50, amp: bool = False, channels_last: bool = False) -> dict:
    """Forward latency in ms (median and p90 over ``iters`` timed calls after ``warmup``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.randn(batch_size, getattr(model, "input_channels", 3), image_size, image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + iters):
        sync()
        start = time.perf_counter()
        with autocast(device, amp):
            model(x)
        sync()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000.0)
    model.train(was_training)
    times.sort()
    return {
        "batch_size": batch_size, "median_ms": statistics.median(times),
        "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
        "img_per_s": 1000.0 * batch_size / statistics.median(times), "iters": iters, "warmup": warmup,
        "device": device_name(device), "dtype": "bf16" if amp else "fp32",
        "channels_last": channels_last, "torch": torch.__version__,
    }


def profile(model: nn.Module, *, image_size: int = 32, throughput_batch: int | None = None, amp: bool = False,
            channels_last: bool = False, iters: int = 50, warmup: int = 10) -> dict:
    """Parameters, MACs and latency at batch 1 and at a throughput batch (default 256 on CUDA, 64 on CPU)."""
    if throughput_batch is None:
        throughput_batch = 256 if next(model.parameters()).device.type == "cuda" else 64
    return {
        "params": count_parameters(model),
        "macs": count_macs(model, (1, getattr(model, "input_channels", 3), image_size, image_size)),
        "latency_b1": latency(model, batch_size=1, image_size=image_size, amp=amp,
                              channels_last=channels_last, iters=iters, warmup=warmup),
        "latency_throughput": latency(model, batch_size=throughput_batch, image_size=image_size, amp=amp,
                                      channels_last=channels_last, iters=max(3, iters // 10),
                                      warmup=max(1, warmup // 5)),
    }
