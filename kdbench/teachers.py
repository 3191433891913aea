"""Teachers: the published CIFAR-100 checkpoints (downloaded on demand, loaded
with ``weights_only=True``), or a teacher trained here with a preset's recipe
and cached by the hash of that recipe."""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
import urllib.error
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch.hub import download_url_to_file

from . import checkpoint
from .config import non_default
from .data import data_root
from .errors import CheckpointError, Unavailable, UsageError
from .models import create_model, resolve_name

# CRD's teachers (RepDistiller) in the layout ``<model>_vanilla/ckpt_epoch_240.pth``. The original
# host (shape2prog.csail.mit.edu) is gone; DKD's authors re-host the same files in one archive.
PUBLISHED_URL = os.environ.get(
    "KDBENCH_TEACHERS_URL",
    "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar")
# sha256 of the archive. None where no digest could be verified when this was written (the archive
# cannot be downloaded in the build environment). Until one is pinned here, the archive is trusted on
# first use: its first download is NOT verified against anything; its digest and that of every
# checkpoint in it are recorded then in MANIFEST, and every later extraction and load is checked
# against them. The digest of every checkpoint actually loaded is also in the results record.
PUBLISHED_SHA256: dict[str, str | None] = {"cifar_teachers.tar": None}
MANIFEST = "manifest.json"  # in teacher_dir(): {"archives": {name: sha256}, "files": {relative path: sha256}}
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
        raise CheckpointError(f"checksum mismatch for {path}: sha256 {digest}, expected {expected}; "
                              "delete it to download it again")
    return digest


def manifest_path() -> Path:
    return teacher_dir() / MANIFEST


def _manifest() -> dict:
    path = manifest_path()
    try:
        manifest = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"teacher manifest {path} is unreadable ({exc}); delete it and the downloaded "
                              "teachers next to it to download them again") from None
    if not isinstance(manifest, dict) or not all(isinstance(manifest.get(k, {}), dict) for k in ("archives", "files")):
        raise CheckpointError(f"teacher manifest {path} is not a kdbench manifest; delete it and the downloaded "
                              "teachers next to it to download them again")
    return {"archives": manifest.get("archives", {}), "files": manifest.get("files", {})}


def _record(files: dict[str, str], archives: dict[str, str] | None = None) -> None:
    """Add digests to the manifest. Two processes recording at once may drop one of the entries (the
    file stays whole: it is written atomically); a dropped entry is recorded again on its next load.
    A teachers folder that cannot be written (a read-only shared copy) is used without a manifest."""
    manifest = _manifest()
    manifest["files"].update(files)
    manifest["archives"].update(archives or {})
    try:
        checkpoint.atomic_write_json(manifest, manifest_path())
    except OSError as exc:
        warnings.warn(f"teacher digests not recorded in {manifest_path()} ({exc}): these teachers are not "
                      "checked against their first use", stacklevel=2)


def _trusted(path: Path, pinned: str | None = None) -> tuple[str, bool]:
    """(sha256, known) of a teacher file. One trained here (under ``local/``) is taken as it is; a
    downloaded one is checked against its ``pinned`` digest, else against
    the digest the manifest recorded when the file was first obtained (trust on first use). ``known``
    is False for a file the manifest has no entry for (placed by hand or extracted by an older
    kdbench): the caller records it once it has loaded."""
    if path.is_relative_to(teacher_dir() / "local"):  # written here: the CRC-32 check of load covers it
        return sha256(path), True
    if pinned is not None:
        return _verify(path, pinned), True
    digest = sha256(path)
    recorded = _manifest()["files"].get(path.relative_to(teacher_dir()).as_posix())
    if recorded is not None and recorded != digest:
        raise CheckpointError(f"teacher checkpoint {path} changed since it was obtained: sha256 {digest}, "
                              f"recorded {recorded} in {manifest_path()}; delete it to obtain it again")
    return digest, recorded is not None


def _extract(archive: Path) -> None:
    """Extract ``archive`` next to it through a hidden temporary folder (a kill mid-way leaves no partial
    checkpoint where the loader looks) and record the digest of the archive and of every file in it."""
    root = archive.parent
    pinned = PUBLISHED_SHA256.get(archive.name)
    digest = _verify(archive, pinned)
    recorded = _manifest()["archives"].get(archive.name)
    if pinned is None and recorded is not None and recorded != digest:
        raise CheckpointError(f"{archive} is not the archive first downloaded: sha256 {digest}, recorded {recorded} "
                              f"in {manifest_path()}; delete it to download it again (or delete the manifest "
                              "to trust this one)")
    files = {}
    try:
        with tempfile.TemporaryDirectory(dir=root, prefix=".extract-") as tmp, tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
            for src in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
                rel = src.relative_to(tmp)
                files[rel.as_posix()] = sha256(src)
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, root / rel)
    except (tarfile.TarError, EOFError) as exc:
        raise CheckpointError(f"archive {archive} is damaged ({type(exc).__name__}: {exc}); "
                              "delete it to download it again") from None
    _record(files, {archive.name: digest})


def published_checkpoint(arch: str) -> Path:
    """Path of ``<arch>_vanilla/ckpt_epoch_240.pth``, downloading the archive if needed."""
    name = f"{resolve_name(arch)}_vanilla/ckpt_epoch_240.pth"
    root = teacher_dir()
    local = root / "local" / name  # trained here by `make teachers`; preferred when present
    if local.exists():
        return local
    found = _find(root, name)
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
    _extract(archive)
    found = _find(root, name)
    if not found:
        raise Unavailable(f"{archive} holds no {name}; place the file under {root / 'local'} or use a teacher "
                          "the archive has")
    return found[0]


def _find(root: Path, name: str) -> list[Path]:
    """Copies of ``name`` under ``root``, not counting trained teachers and hidden (temporary) folders."""
    return sorted(p for p in root.glob(f"**/{name}")
                  if "trained" not in p.parts and not any(part.startswith(".") for part in p.relative_to(root).parts))


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
    digest, known = _trusted(path)
    state = checkpoint.load(path)
    model = checkpoint.load_state_strict(create_model(arch, num_classes=num_classes),
                                         checkpoint.section(state, "model", path), path)
    if not known:
        _record({path.relative_to(teacher_dir()).as_posix(): digest})
    info = {"source": "published", "path": str(path), "sha256": digest, "url": PUBLISHED_URL}
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
    try:
        digest = _verify(path, spec.get("sha256"))
    except CheckpointError:
        path.unlink()  # never leave a download that failed its check where the next run would find it
        raise
    if spec.get("sha256") is None:  # trust on first use, as the published archive
        _record({path.relative_to(root).as_posix(): digest})
    return path


def load_paper_checkpoint(arch: str, spec: dict, num_classes: int, device) -> tuple[torch.nn.Module, dict]:
    """Load ``spec``'s checkpoint strictly into the zoo's ``arch`` (``state_key`` selects the state dict
    inside the file, ``strip_prefix`` removes e.g. DataParallel's ``module.``)."""
    path = paper_checkpoint(spec)
    digest, known = _trusted(path, spec.get("sha256"))
    state = checkpoint.load(path)
    if spec.get("state_key"):
        state = checkpoint.section(state, spec["state_key"], path)
    prefix = spec.get("strip_prefix") or ""
    if prefix and isinstance(state, Mapping):
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    model = checkpoint.load_state_strict(create_model(arch, num_classes=num_classes), state, path)
    if not known:
        _record({path.relative_to(teacher_dir()).as_posix(): digest})
    info = {"source": "published", "path": str(path), "sha256": digest, "url": spec["url"]}
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
    model = checkpoint.load_state_strict(create_model(cfg.teacher, num_classes=num_classes),
                                         checkpoint.section(state, "model", path), path)
    return model.to(device), {"source": "train", "path": str(path), "sha256": sha256(path),
                              "cache_key": key, "top1": float(checkpoint.section(state, "accuracy", path))}
