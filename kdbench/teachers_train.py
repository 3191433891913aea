"""``make teachers``: train a teacher with the vanilla paper recipe and install it where the
published-teacher loader looks first (``$KDBENCH_DATA/teachers/local/<model>_vanilla/``)."""
from __future__ import annotations

import copy
from pathlib import Path

from . import checkpoint
from .models import resolve_name
from .registry import Paper, get_paper
from .reproduce import pick_device, plan, run_one
from .teachers import teacher_dir


def local_teacher_path(model: str) -> Path:
    return teacher_dir() / "local" / f"{resolve_name(model)}_vanilla" / "ckpt_epoch_240.pth"


def train_and_install(model: str, preset: str = "paper", device=None, overrides: dict | None = None) -> Path:
    paper = get_paper("vanilla")
    if model not in paper.pairs(preset):  # any zoo model can be a teacher, with the preset's recipe
        spec = copy.deepcopy(paper.spec)
        spec["presets"][preset]["pairs"][model] = {}
        paper = Paper(paper.id, paper.folder, spec)
    (cfg,) = plan(paper, preset, [model], [0], overrides or {})
    record = run_one(paper, cfg, device=pick_device(device))
    ckpt = Path(record["run_dir"]) / "checkpoint-main.pt"
    saved = checkpoint.section(checkpoint.load(ckpt), "model", ckpt)
    state = {k[len("student."):]: v for k, v in saved.items() if k.startswith("student.")}
    path = local_teacher_path(model)
    checkpoint.atomic_save({"model": state, "epoch": record["epochs"], "accuracy": record["last_top1"]}, path)
    return path
