"""Atomic writes: a crash mid-write never leaves a truncated file behind."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def discard_partial(folder) -> None:
    """Delete what killed atomic writes left in ``folder`` (their temporary files; the targets are intact)."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def atomic_save(obj, path) -> None:
    _atomic(path, lambda fh: torch.save(obj, fh))


def atomic_write_text(text: str, path) -> None:
    _atomic(path, lambda fh: fh.write(text.encode()))


def atomic_write_json(obj, path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def load(path, map_location="cpu"):
    """Load a checkpoint with ``weights_only=True`` (no arbitrary pickles)."""
    return torch.load(path, map_location=map_location, weights_only=True)
