"""Teachers: the published CIFAR-100 checkpoints (downloaded on demand, loaded
with ``weights_only=True``), or a teacher trained here with a preset's recipe
and cached by the hash of that recipe."""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import urllib.error
from pathlib import Path

import torch
from torch.hub import download_url_to_file

from . import checkpoint
from .config import non_default
from .data import data_root
from .errors import Unavailable, UsageError
from .models import resolve_name, create_model

# CRD's teachers (RepDistiller) in the layout ``<model>_vanilla/ckpt_epoch_240.pth``. The original
# host (shape2prog.csail.mit.edu) is gone; DKD's authors re-host the same files in one archive.
PUBLISHED_URL = os.environ.get(
    "KDBENCH_TEACHERS_URL",
    "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar")
# sha256 of the archive and of each checkpoint. None where no digest could be verified when this
# was written (the archive cannot be downloaded in the build environment); the digest of every
# checkpoint actually loaded is recorded in the results record, so runs stay auditable.
PUBLISHED_SHA256: dict[str, str | None] = {"cifar_teachers.tar": None}
IMAGENET_TEACHER_WEIGHTS = "IMAGENET1K_V1"


def teacher_dir() -> Path:
    return data_root() / "teachers"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, expected: str | None) -> str:
    digest = sha256(path)
    if expected is not None and digest != expected:
        raise RuntimeError(f"checksum mismatch for {path}: sha256 {digest}, expected {expected}; delete it and retry")
    return digest


def published_checkpoint(arch: str) -> Path:
    """Path of ``<arch>_vanilla/ckpt_epoch_240.pth``, downloading the archive if needed."""
    name = f"{resolve_name(arch)}_vanilla/ckpt_epoch_240.pth"
    root = teacher_dir()
    local = root / "local" / name  # trained here by `make teachers`; preferred when present
    if local.exists():
        return local
    found = sorted(p for p in root.glob(f"**/{name}") if "trained" not in p.parts)
    if found:
        return found[0]
    archive = root / "cifar_teachers.tar"
    if not archive.exists():
        root.mkdir(parents=True, exist_ok=True)
        try:
            download_url_to_file(PUBLISHED_URL, str(archive), progress=True)
        except (urllib.error.URLError, OSError) as exc:
            raise Unavailable(
                f"published teacher {name} is missing under {root} and could not be downloaded from "
                f"{PUBLISHED_URL} ({exc}); set KDBENCH_DATA, place the file there, or use PRESET=smoke") from None
    _verify(archive, PUBLISHED_SHA256.get("cifar_teachers.tar"))
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    found = sorted(root.glob(f"**/{name}"))
    if not found:
        raise RuntimeError(f"{archive} holds no {name}")
    return found[0]


def load_published(arch: str, num_classes: int, device) -> tuple[torch.nn.Module, dict]:
    if arch.startswith("torchvision:"):
        # ImageNet teachers: torchvision's original weights (ResNet34 73.31, ResNet50 76.13), as the
        # papers used; the newer DEFAULT weights of ResNet50 (80.86) would be a different teacher.
        model = create_model(arch, num_classes=num_classes, pretrained=IMAGENET_TEACHER_WEIGHTS)
        return model.to(device), {"source": "published", "weights": f"{arch} {IMAGENET_TEACHER_WEIGHTS}"}
    if arch.startswith("timm:"):
        model = create_model(arch, num_classes=num_classes, pretrained=True)
        return model.to(device), {"source": "published", "weights": f"{arch} pretrained"}
    path = published_checkpoint(arch)
    model = create_model(arch, num_classes=num_classes)
    state = checkpoint.load(path)
    model.load_state_dict(state["model"], strict=True)
    info = {"source": "published", "path": str(path), "sha256": sha256(path), "url": PUBLISHED_URL}
    if "accuracy" in state:
        info["reported_top1"] = float(state["accuracy"])
    return model.to(device), info


def paper_checkpoint(spec: dict) -> Path:
    """A teacher a paper published itself (``teacher_checkpoint`` in its config): ``file`` under
    ``teachers/local/`` or ``teachers/papers/``, else downloaded from ``url`` (checked against
    ``sha256`` when given)."""
    root = teacher_dir()
    for path in (root / "local" / spec["file"], root / "papers" / spec["file"]):
        if path.exists():
            return path
    path = root / "papers" / spec["file"]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_url_to_file(spec["url"], str(path), progress=True)
    except (urllib.error.URLError, OSError) as exc:
        raise Unavailable(
            f"teacher checkpoint {spec['file']} is missing under {root} and could not be downloaded from "
            f"{spec['url']} ({exc}); place it in {root / 'local'}, set KDBENCH_DATA, or use PRESET=smoke") from None
    _verify(path, spec.get("sha256"))
    return path


def load_paper_checkpoint(arch: str, spec: dict, num_classes: int, device) -> tuple[torch.nn.Module, dict]:
    """Load ``spec``'s checkpoint strictly into the zoo's ``arch`` (``state_key`` selects the state dict
    inside the file, ``strip_prefix`` removes e.g. DataParallel's ``module.``)."""
    path = paper_checkpoint(spec)
    state = checkpoint.load(path)
    if spec.get("state_key"):
        state = state[spec["state_key"]]
    prefix = spec.get("strip_prefix") or ""
    state = {k[len(prefix):] if prefix and k.startswith(prefix) else k: v for k, v in state.items()}
    model = create_model(arch, num_classes=num_classes)
    model.load_state_dict(state, strict=True)
    info = {"source": "published", "path": str(path), "sha256": sha256(path), "url": spec["url"]}
    if "reported_top1" in spec:
        info["reported_top1"] = float(spec["reported_top1"])
    return model.to(device), info


def trained_key(arch: str, dataset: str, train_cfg: dict, data_options: dict | None, seed: int) -> str:
    blob = json.dumps({"arch": resolve_name(arch), "dataset": dataset, "train": train_cfg,
                       "data": data_options, "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def trained_path(arch: str, dataset: str, key: str) -> Path:
    return teacher_dir() / "trained" / f"{resolve_name(arch)}-{dataset}-{key}" / "ckpt.pth"


def get_teacher(cfg, num_classes: int, device, train_teacher) -> tuple[torch.nn.Module | None, dict]:
    """The frozen teacher of a run. ``train_teacher(arch, train_cfg, run_dir)`` trains one when asked."""
    if cfg.teacher is None or cfg.teacher_source == "none":
        return None, {"source": "none"}
    if cfg.teacher_source == "published":
        if cfg.teacher_checkpoint:
            return load_paper_checkpoint(cfg.teacher, cfg.teacher_checkpoint, num_classes, device)
        return load_published(cfg.teacher, num_classes, device)
    if cfg.teacher_source != "train":
        raise UsageError(f"unknown teacher_source {cfg.teacher_source!r}; choose from: none, published, train")
    train_cfg = non_default(cfg.teacher_train)
    augment = cfg.teacher_augment or cfg.augment  # what the teacher is trained with
    data_options = cfg.data_subset if not augment else {**(cfg.data_subset or {}), "augment": augment}
    key = trained_key(cfg.teacher, cfg.dataset, train_cfg, data_options, seed=0)
    path = trained_path(cfg.teacher, cfg.dataset, key)
    if not path.exists():
        model, summary = train_teacher(cfg.teacher, cfg.teacher_train, path.parent)
        checkpoint.atomic_save({"model": model.state_dict(), "epoch": cfg.teacher_train.epochs,
                                "accuracy": summary["last_top1"], "best_accuracy": summary["best_top1"]}, path)
    state = checkpoint.load(path)
    model = create_model(cfg.teacher, num_classes=num_classes)
    model.load_state_dict(state["model"], strict=True)
    return model.to(device), {"source": "train", "path": str(path), "sha256": sha256(path),
                              "cache_key": key, "top1": float(state["accuracy"])}
