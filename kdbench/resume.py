"""What an epoch checkpoint holds and how a run continues from it (``kdbench reproduce --resume``).

A checkpoint, written atomically at the end of every epoch (:func:`kdbench.checkpoint.atomic_save`), holds
everything the next epoch depends on besides the code and the config:

* the distiller's state dict without the frozen teacher: the student, a method's extra parts and every
  buffer (BatchNorm statistics, CRD's memory banks and normalisers);
* the optimizer's state (SGD momentum). The learning rate is a function of the epoch
  (:meth:`kdbench.config.TrainConfig.lr_at`), so there is no scheduler state; there is no AMP loss scaler
  (bf16 autocast needs none);
* the trainer's state (epoch, best top-1, the history of epoch records, skipped-step counts) and the
  teacher-logit cache's hit and miss counts;
* the state of every random generator (:mod:`kdbench.rng`); the data order and augmentation come from
  (seed, epoch) and need nothing;
* ``identity``: the digest of the run's config. A checkpoint of another config (or one written before
  checkpoints held the generators) is not resumed: the run starts afresh and says so.

A teacher-logit cache, when on, is saved next to it as one file per epoch with the entries filled in that
epoch (:meth:`kdbench.teacher_cache.TeacherLogitCache.save_new`); they are deleted when the run has written
its results record. So a run killed at any point continues from its last complete epoch with the same
numbers as an uninterrupted run: on the CPU the final weights and metrics are equal bit for bit
(``tests/test_resume.py``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import checkpoint, distributed, rng
from .errors import CheckpointError


def load(ckpt_path: Path, identity: str | None, device, log, distiller: torch.nn.Module) -> dict | None:
    """The checkpoint to resume from, or None (none yet, or of another config: then start afresh). A
    damaged one, or one of this config whose weights do not fit, is a one-line CheckpointError."""
    if not Path(ckpt_path).exists():
        return None
    saved = checkpoint.load(ckpt_path, map_location=device)
    if identity is not None and saved.get("identity") != identity:
        log(f"{ckpt_path} is of another config (digest {saved.get('identity')}, this run {identity}): "
            f"starting afresh")
        return None
    return checkpoint.check_resume(saved, distiller, ckpt_path)


def restore(saved: dict, distiller: torch.nn.Module, optimizer, ckpt_path: Path) -> dict:
    """Put weights, optimizer and generators back as they were at the end of the checkpoint's epoch;
    return the trainer state."""
    distiller.load_state_dict(saved["model"], strict=False)  # keys and shapes checked by load()
    try:
        optimizer.load_state_dict(saved["optimizer"])
    except (ValueError, KeyError) as exc:  # parameter groups of another method or stage
        raise CheckpointError(f"checkpoint {ckpt_path} holds an optimizer of another run ({exc}); delete it "
                              "or run without --resume") from None
    if "rng" in saved:
        rng.restore(saved["rng"], distiller)
    if "teacher_cache" in saved and distiller.logit_cache is not None:
        distiller.logit_cache.hits, distiller.logit_cache.misses = saved["teacher_cache"]
    return saved["trainer"]


def payload(model_state: dict, optimizer, state: dict, distiller: torch.nn.Module, identity: str | None) -> dict:
    """The checkpoint of the epoch that just ended (taken after its evaluation: nothing draws a random
    number between this and the next epoch's first step)."""
    cache = distiller.logit_cache
    return {"model": model_state, "optimizer": optimizer.state_dict(), "trainer": state,
            "rng": rng.capture(distiller), "identity": identity,
            **({"teacher_cache": [cache.hits, cache.misses]} if cache is not None else {})}


def start_log(log_path: Path, history: list[dict]) -> None:
    """The epoch log as of the checkpoint: empty for a fresh run; for a resumed one exactly its epochs
    (a run killed between appending an epoch's line and writing its checkpoint would else log it twice)."""
    if history:
        checkpoint.atomic_write_text("".join(json.dumps(r) + "\n" for r in history), log_path)
    elif Path(log_path).exists():
        Path(log_path).unlink()


def _cache_files(run_dir: Path, stage: str) -> dict[int, Path]:
    """{epoch: file} of the teacher-logit cache entries this process saved in ``stage``."""
    prefix = f"teacher-cache-{stage}-r{distributed.rank()}-e"
    return {int(p.name[len(prefix):-3]): p for p in Path(run_dir).glob(f"{prefix}*.pt")}


def restore_cache(distiller, run_dir: Path, stage: str, epoch: int) -> None:
    """Reload the cache entries of epochs up to ``epoch`` (the checkpoint's); drop later ones (an epoch the
    kill interrupted) and, for a fresh start, all of this stage's."""
    files = _cache_files(run_dir, stage)
    for e in [e for e in files if e > epoch]:
        files.pop(e).unlink()
    if distiller.logit_cache is not None:
        distiller.logit_cache.load_saved([files[e] for e in sorted(files)])


def save_cache(distiller, run_dir: Path, stage: str, epoch: int) -> None:
    if distiller.logit_cache is not None:
        distiller.logit_cache.save_new(Path(run_dir) / f"teacher-cache-{stage}-r{distributed.rank()}-e{epoch}.pt")


def discard_cache(run_dir: Path) -> None:
    """Once the run is recorded the cache files are not needed any more."""
    for path in Path(run_dir).glob("teacher-cache-*.pt"):
        path.unlink()
