"""An exact cache of the frozen teacher's logits, per (training sample, augmented view).

The standard CIFAR augmentation has a finite set of outcomes per image: (2p + 1)^2 crop offsets x 2
flips = 162 views at padding 4. A teacher in eval mode maps each view to fixed logits, so they can be
computed once and looked up afterwards. The cache is filled lazily: a batch's samples whose view is
not cached yet go through the teacher (only those), the rest are read. Over 240 epochs an image draws
240 views out of 162, about 125 distinct ones (162 (1 - (161/162)^240)), so a run costs ~125 teacher
forwards per image instead of 240 and never more than the live teacher.

Where it applies (``train.teacher_cache: auto``): the run has a teacher whose BatchNorm uses running
statistics (``Distiller.teacher_bn == "eval"``), the loader reports views (the device-resident CIFAR
loader), and the table fits in memory; the method obtains teacher logits through
``Distiller.teacher_logits(images)`` with the batch images as the loader produced them (KD, DKD, DIST,
``+kd``). Feature methods call ``teacher_features`` and never touch the cache (it is then never
allocated). Memory: ``samples x views x classes x bytes``, e.g. CIFAR-100: 50,000 x 162 x 100 x 4 B
= 3.24 GB in fp32, 1.62 GB in bf16, plus 8.1 MB of flags.

Logits equal the live teacher's up to floating-point reduction order (the teacher sees sub-batches of
misses instead of whole batches). For the same reason a resumed run must not recompute what it had cached:
at every epoch checkpoint the trainer writes the entries filled since the previous one
(:meth:`TeacherLogitCache.save_new`: at most one entry per image and epoch, 20 MB per epoch for CIFAR-100 in
fp32, and over a run no more than the filled table; deleted once the run is recorded) and a resumed run
reads them back (:meth:`TeacherLogitCache.load_saved`), so it continues with the very values of the
uninterrupted run (the hit and miss counts are in the checkpoint itself).
"""
from __future__ import annotations

import torch

from . import checkpoint

SAFETY = 0.8  # use at most this share of the free memory


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TeacherLogitCache:
    """Logits per (sample index, view id), filled on demand."""

    def __init__(self, num_samples: int, num_views: int, num_classes: int, device, dtype=torch.float32):
        self.shape = (num_samples, num_views, num_classes)
        self.device, self.dtype = torch.device(device), dtype
        self.logits: torch.Tensor | None = None  # allocated on first use
        self.filled: torch.Tensor | None = None
        self.hits = self.misses = 0
        self._saved: torch.Tensor | None = None  # ``filled`` as of the last save_new

    @property
    def nbytes(self) -> int:
        """Bytes the table takes (or will take once used)."""
        n, v, c = self.shape
        return n * v * (c * torch.empty((), dtype=self.dtype).element_size() + 1)

    def fits(self) -> bool:
        return self.nbytes <= SAFETY * free_bytes(self.device)

    def _allocate(self) -> None:
        """The table, on first use (a filled lookup or entries read back on resume)."""
        if self.logits is None:
            self.logits = torch.empty(self.shape, dtype=self.dtype, device=self.device)
            self.filled = torch.zeros(self.shape[:2], dtype=torch.bool, device=self.device)

    def lookup(self, teacher, images: torch.Tensor, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """The teacher's logits of ``images`` (sample ``indices``, augmented ``views``); misses are computed
        with ``teacher(images[miss])`` and stored."""
        self._allocate()
        miss = ~self.filled[indices, views]
        n_miss = int(miss.sum())
        if n_miss:
            with torch.no_grad():
                fresh = teacher(images[miss] if n_miss < len(indices) else images)
            self.logits[indices[miss], views[miss]] = fresh.to(self.dtype)
            self.filled[indices[miss], views[miss]] = True
        self.misses += n_miss
        self.hits += len(indices) - n_miss
        return self.logits[indices, views]

    def save_new(self, path) -> None:
        """Write the entries filled since the last call to ``path``."""
        rows = views = torch.zeros(0, dtype=torch.int64)
        logits = torch.zeros(0, self.shape[2], dtype=self.dtype)
        if self.filled is not None:
            new = self.filled if self._saved is None else self.filled & ~self._saved
            rows, views = new.nonzero(as_tuple=True)
            logits = self.logits[rows, views].cpu()
            rows, views = rows.cpu(), views.cpu()
            self._saved = self.filled.clone()
        checkpoint.atomic_save({"rows": rows, "views": views, "logits": logits}, path)

    def load_saved(self, paths) -> None:
        """Add the entries of files written by :meth:`save_new`."""
        for path in paths:
            saved = checkpoint.load(path)
            self._allocate()
            rows, views = saved["rows"].to(self.device), saved["views"].to(self.device)
            self.logits[rows, views] = saved["logits"].to(self.device, self.dtype)
            self.filled[rows, views] = True
        if self.filled is not None:
            self._saved = self.filled.clone()

    def summary(self) -> dict:
        total = self.hits + self.misses
        used = self.logits is not None or total  # (a resumed run may not have needed to allocate it again)
        return {"nbytes": self.nbytes if used else 0, "hits": self.hits, "misses": self.misses,
                "hit_rate": self.hits / total if total else None}
