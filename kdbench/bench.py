"""``kdbench bench``: images/s of one KD training step (teacher forward, student forward and
backward, SGD step) on device-resident data for a teacher-student pair."""
from __future__ import annotations

import json
import time

import torch

from .config import TrainConfig
from .distiller import StepContext
from .evaluate import device_name
from .models import create_model
from .registry import get_paper
from .train import resolve_precision, train_step


def make_step(pair: str, batch_size: int, device, amp: str = "auto", channels_last: str = "auto"):
    """A closure running one KD step (Hinton KD, CIFAR-100 recipe) on a fixed random batch."""
    device = torch.device(device)
    teacher_name, student_name = pair.split("-", 1)
    cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=0.05, weight_decay=5e-4, amp=amp, channels_last=channels_last)
    use_amp, cl = resolve_precision(cfg, device)
    fmt = torch.channels_last if cl else torch.contiguous_format
    teacher = create_model(teacher_name, num_classes=100).to(device, memory_format=fmt)
    student = create_model(student_name, num_classes=100).to(device, memory_format=fmt)
    distiller = get_paper("kd").method_class()(student, teacher).to(device)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 100, (batch_size,), device=device)
    ctx = StepContext(epoch=1, epochs=1)

    def step():
        return sum(train_step(distiller, opt, x, y, ctx, use_amp).values()).detach()

    return step, {"precision": "bf16" if use_amp else "fp32", "channels_last": cl}


def bench(pair="resnet32x4-resnet8x4", batch_size=64, steps=20, device=None, as_json=False,
          amp="auto", channels_last="auto") -> dict:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    step, info = make_step(pair, batch_size, device, amp, channels_last)
    for _ in range(3):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    elapsed = time.perf_counter() - start
    out = {"pair": pair, "batch_size": batch_size, "device": device_name(device), "steps": steps,
           "kdbench_img_s": steps * batch_size / elapsed, "torch": torch.__version__, **info}
    print(json.dumps(out) if as_json else
          f"{pair} batch {batch_size} on {out['device']} ({info['precision']}, channels_last={info['channels_last']}): "
          f"{out['kdbench_img_s']:.1f} img/s over {steps} steps")
    return out
