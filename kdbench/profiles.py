"""Model profiles: parameters, MACs and latency of zoo models on one device, recorded
with provenance under ``results/profiles/`` (``kdbench profile``)."""
from __future__ import annotations

import re
import time
from pathlib import Path

import torch

from . import results
from .checkpoint import atomic_write_json
from .evaluate import device_name, profile
from .models import create_model, list_models


def profile_dir(root: Path | None = None) -> Path:
    return Path(root or results.results_root()) / "profiles"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def record_profiles(models=None, *, device=None, num_classes: int = 100, iters: int = 30,
                    root: Path | None = None, log=print) -> Path:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = channels_last = device.type == "cuda"
    entries = {}
    for name in models or list_models():
        model = create_model(name, num_classes=num_classes).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        entries[name] = profile(model, image_size=getattr(model, "image_size", 32), amp=amp,
                                channels_last=channels_last, iters=iters)  # MNIST nets: 28 x 28
        log(f"{name}: {entries[name]['params'] / 1e6:.2f}M params, {entries[name]['macs'] / 1e6:.1f}M MACs, "
            f"{entries[name]['latency_b1']['median_ms']:.2f} ms @1")
    record = {"device": device_name(device), "num_classes": num_classes, "image_size": 32,
              "precision": "bf16" if amp else "fp32", "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              **results.environment(), "models": entries}
    path = profile_dir(root) / f"{slug(record['device'])}.json"
    atomic_write_json(record, path)
    return path


def load_profiles(root: Path | None = None) -> list[dict]:
    out = []
    for path in sorted(profile_dir(root).glob("*.json")):
        rec = results.read_json(path, "model profile")
        rec["_path"] = str(path)
        out.append(rec)
    return out
