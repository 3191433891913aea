"""A device-resident loader for small-image datasets (CIFAR, MNIST and the synthetic sets).

The whole uint8 dataset lives on the device. A training loader keeps it zero-padded together with
its mirror image (2 x N x 3 x 40 x 40 uint8: 480 MB for CIFAR-100's 50,000 images, 48 MB for the
synthetic set) and takes a sliding-window view of it (``unfold``, no copy), so that the random crop
and flip of a whole batch is ONE advanced-indexing gather with per-sample indices
``[flip, sample, top, left]``; the normalisation is two fused elementwise passes. No DataLoader, no
worker processes, no per-sample Python. A test loader keeps the plain dataset and only normalises.

The augmentation is exactly torchvision's ``RandomCrop(32, padding=4)`` followed by
``RandomHorizontalFlip()`` and ``Normalize(mean, std)`` applied to ``ToTensor()`` of the uint8 image:
pixels come from the image zero-padded by ``padding`` (so padding normalises to ``-mean/std``),
the crop's top-left corner is uniform in ``[0, 2 * padding]`` on each axis, the flip has p = 1/2.
With ``flip=False`` there is no flip (digits): the crop alone is a random translation by up to
``padding`` pixels on each axis, zero-filled (``padding=0``: no augmentation). ``rotation=d`` adds
torchvision's ``RandomRotation(d)`` after the flip, as Pillow computes it (see :func:`rotate_nearest`).

Randomness: an epoch's sample order (``torch.randperm``), crop offsets and flips are drawn on the CPU
from a ``torch.Generator`` seeded from ``(seed, epoch)`` and then moved to the device. The offsets and
flips are drawn per *sample index* (not per batch position), so for a given (seed, epoch) every
sample gets the same augmentation whatever the batch size, the device or how many times the epoch is
iterated. CPU and CUDA therefore produce the same order, crops and flips; the normalised values agree
to float32 rounding (the same two IEEE operations, sub then div, on both).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for (seed, epoch); SeedSequence mixing makes nearby pairs unrelated."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF]).generate_state(2, np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def _pil_rotation_matrix(angles_deg) -> torch.Tensor:
    """Float64 ``K x 4`` rows ``(a, b, d, e)``: the linear part of the inverse map Pillow's
    ``Image.rotate(angle)`` builds, rounded to 15 decimals as Pillow rounds it (Python ``math``, like
    Pillow, so that the fixed-point conversion below sees the same doubles)."""
    rows = []
    for angle in (float(v) for v in angles_deg):
        r = -math.radians(angle % 360.0)
        cos, sin = round(math.cos(r), 15), round(math.sin(r), 15)
        rows.append((cos, sin, -sin, cos))
    return torch.tensor(rows, dtype=torch.float64).view(-1, 4)


def rotate_nearest(x: torch.Tensor, angles_deg) -> torch.Tensor:
    """Rotate each image of the uint8 batch ``x`` (B x C x H x W) counter-clockwise by its angle in
    degrees about the image centre, nearest neighbour, zero fill: exactly
    ``torchvision.transforms.functional.rotate(pil_image, angle)`` with ``InterpolationMode.NEAREST``
    (what ``RandomRotation(d)`` does to a PIL image), computed on ``x``'s device.

    Pillow (``affine_fixed`` in its Geometry.c) converts the inverse map to 16.16 fixed point with
    ``floor(v * 65536 + 0.5)``, evaluated at the centre of output pixel (0, 0), and steps through the
    output in integer arithmetic: output ``(x, y)`` reads input ``((a2 + a0 x + a1 y) >> 16, (a5 + a3 x +
    a4 y) >> 16)``, zero outside the image. The same doubles and integers here give the same pixels."""
    b, _, h, w = x.shape
    m = _pil_rotation_matrix(angles_deg)
    cx, cy = w / 2.0, h / 2.0
    a, bb, d, e = m.unbind(1)
    c = a * -cx + bb * -cy + cx  # Pillow: matrix[2], matrix[5] = transform(-cx, -cy) + centre
    f = d * -cx + e * -cy + cy

    def fix(v: torch.Tensor) -> torch.Tensor:
        return torch.floor(v * 65536.0 + 0.5).to(torch.int64)
    a0, a1, a3, a4 = fix(a), fix(bb), fix(d), fix(e)
    a2 = fix(c + a * 0.5 + bb * 0.5)  # the map evaluated at the centre of output pixel (0, 0)
    a5 = fix(f + d * 0.5 + e * 0.5)
    coef = torch.stack([a0, a1, a2, a3, a4, a5], 1).to(x.device)
    xs = torch.arange(w, device=x.device, dtype=torch.int64).view(1, 1, w)
    ys = torch.arange(h, device=x.device, dtype=torch.int64).view(1, h, 1)
    col = (coef[:, 2, None, None] + ys * coef[:, 1, None, None] + xs * coef[:, 0, None, None]) >> 16
    row = (coef[:, 5, None, None] + ys * coef[:, 4, None, None] + xs * coef[:, 3, None, None]) >> 16
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)  # B x H x W
    src = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1)).view(b, 1, h * w).expand(-1, x.shape[1], -1)
    out = x.reshape(b, x.shape[1], h * w).gather(2, src).view_as(x)
    return out * inside.unsqueeze(1).to(x.dtype)


def _reflect_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """``F.pad(x, (p,) * 4, mode="reflect")`` for uint8 (which ``F.pad`` does not reflect): a gather."""
    def index(n: int) -> torch.Tensor:
        i = torch.arange(-p, n + p, device=x.device).abs()
        return torch.where(i > n - 1, 2 * (n - 1) - i, i)
    return x[..., index(x.shape[-2]), :][..., index(x.shape[-1])]


class EpochBatches:
    """Epoch bookkeeping shared by the in-memory loaders (needs ``num_samples``, ``world``, ``train``,
    ``drop_last``, ``batch_size``)."""

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _epoch_length(self) -> int:
        """Samples this process iterates per epoch (its shard: at most N - 1 samples are dropped)."""
        return self.num_samples // self.world if self.train else self.num_samples

    def __len__(self) -> int:
        if self.drop_last:
            return self._epoch_length() // self.batch_size
        return math.ceil(self._epoch_length() / self.batch_size)


class DeviceLoader(EpochBatches):
    """Iterate ``(images, labels, indices)`` batches of a uint8 dataset held on ``device``.

    Args:
        images_u8: uint8 ``N x C x H x W``; labels: ``N`` integer labels.
        batch_size: samples per batch; the last short batch is kept unless ``drop_last``.
        device: where the dataset lives and the batches are produced.
        mean, std: per-channel normalisation of images scaled to [0, 1].
        train: shuffle and augment (random crop with zero padding ``padding`` + horizontal flip if
            ``flip``); else fixed order, normalisation only.
        padding_mode: ``"zeros"`` (``RandomCrop(32, padding=4)``) or ``"reflect"`` (``Pad(4,
            padding_mode="reflect")`` then a 32 x 32 crop, as OFD's and some other official code does).
        rotation: degrees ``d`` of torchvision's ``RandomRotation(d)`` after the crop and flip (an angle
            uniform in ``[-d, d]`` per sample, nearest, zero fill; Tf-KD's transform); 0 = none. The set
            of augmented views is then unbounded (``num_views`` is None: no teacher-logit cache).
        seed: with the epoch (``set_epoch``), fixes order and augmentation.
        same_class_pairs: each training batch of ``batch_size`` samples is followed by as many partners,
            partner ``k`` drawn uniformly among the samples of anchor ``k``'s class (possibly itself) and
            augmented independently (CS-KD's ``PairBatchSampler``): batches hold ``2 x batch_size``
            images, anchors first; an epoch still visits every anchor once.
        channels_last: return images in ``torch.channels_last`` memory format.
        dtype: dtype of the returned images (normalisation is computed in float32).

    ``images`` are normalised ``dtype`` tensors, ``labels`` int64, ``indices`` int64 positions of
    the samples in the dataset (for methods that keep per-sample state, e.g. CRD's memory bank).
    Iterating does not advance the epoch: call ``set_epoch(e)`` before iterating epoch ``e``.
    """

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor, *, batch_size: int, device, mean, std,
                 train: bool, seed: int = 0, drop_last: bool = False, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32, padding: int = 4, padding_mode: str = "zeros",
                 flip: bool = True, shard: tuple[int, int] = (0, 1), same_class_pairs: bool = False,
                 rotation: float = 0.0):
        if images_u8.dtype != torch.uint8 or images_u8.dim() != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {images_u8.dtype} {tuple(images_u8.shape)}")
        if labels.shape != images_u8.shape[:1]:
            raise ValueError(f"{len(labels)} labels for {len(images_u8)} images")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.channels_last = bool(channels_last)
        self.dtype = dtype
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
        if not isinstance(flip, bool):
            raise ValueError(f"flip must be true or false, got {flip!r}")
        self.padding = padding if train else 0
        self.flip = flip and self.train
        if isinstance(rotation, bool) or not isinstance(rotation, (int, float)) or not 0 <= rotation <= 180:
            raise ValueError(f"rotation must be degrees in [0, 180], got {rotation!r}")
        self.rotation = float(rotation) if self.train else 0.0
        if padding_mode not in ("zeros", "reflect"):
            raise ValueError(f"padding_mode must be zeros or reflect, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.same_class_pairs = bool(same_class_pairs) and self.train
        self.rank, self.world = shard  # process r of N takes epoch positions r, r + N, ... (kdbench.distributed)
        self.epoch = 0
        n, c, h, w = images_u8.shape
        self.num_samples, self.shape = n, (c, h, w)
        self.labels = labels.to(self.device, torch.int64)
        mean = torch.as_tensor(mean, dtype=torch.float32).view(1, c, 1, 1) * 255.0
        std = torch.as_tensor(std, dtype=torch.float32).view(1, c, 1, 1) * 255.0
        self._mean, self._std = mean.to(self.device), std.to(self.device)
        data = images_u8.to(self.device).contiguous()
        if not self.train:
            self._data = data
            return
        # Training keeps the dataset zero-padded and also mirrored: [0] = padded, [1] = its mirror image
        # (only [0] without flips).
        # Then crop + flip of sample i at (top, left, flip) is element [flip, i, :, top, left'] of a
        # sliding-window view (left' = 2 * padding - left when mirrored, since the mirror of a crop is the
        # crop of the mirrored image at the mirrored offset): one gather per batch, no index arithmetic.
        p = self.padding
        padded = F.pad(data, (p, p, p, p)) if padding_mode == "zeros" else _reflect_pad(data, p)
        both = torch.stack([padded, padded.flip(-1)] if self.flip else [padded])  # 2 (1) x N x C x (H+2p) x (W+2p)
        if self.channels_last:  # stored NHWC so that a gathered batch is already channels_last in memory
            both = both.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        self._data = both
        # 2 (1) x N x dy x dx x C x H x W view: [flip, i, top, left] is a crop
        self._windows = both.unfold(3, h, 1).unfold(4, w, 1).permute(0, 1, 3, 4, 2, 5, 6)

    @property
    def raw_inputs(self) -> torch.Tensor:
        """What a method sees as the training inputs (``DataInfo.train_inputs``): :attr:`images`."""
        return self.images

    @property
    def images(self) -> torch.Tensor:
        """The unaugmented uint8 dataset on the device (a view: no copy)."""
        if not self.train:
            return self._data
        p, (_, h, w) = self.padding, self.shape
        return self._data[0, :, :, p:p + h, p:p + w]

    def epoch_plan(self, epoch: int | None = None) -> dict:
        """The CPU random draws of an epoch: ``order`` (N), crop ``offsets`` (N x 2: top, left, indexed
        by sample), ``flips`` (N bool, by sample; all False without flips). Deterministic in (seed, epoch)."""
        g = epoch_generator(self.seed, self.epoch if epoch is None else epoch)
        n = self.num_samples
        order = torch.randperm(n, generator=g)
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=g)
        flips = torch.rand(n, generator=g) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        plan = {"order": order, "offsets": offsets, "flips": flips}
        if self.rotation:  # drawn after the crops and flips, which stay those of a loader without rotation
            plan["angles"] = self._angles(n, g)
        if self.same_class_pairs:  # drawn after the anchors' draws, which stay those of a plain loader
            plan["partners"] = self._same_class(order, g)  # partner of the anchor at each epoch position
            plan["partner_offsets"] = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=g)
            plan["partner_flips"] = (torch.rand(n, generator=g) < 0.5 if self.flip
                                     else torch.zeros(n, dtype=torch.bool))
            if self.rotation:
                plan["partner_angles"] = self._angles(n, g)
        return plan

    def _angles(self, n: int, g: torch.Generator) -> torch.Tensor:
        """Per sample, RandomRotation's angle: float32 uniform in [-d, d] (torchvision draws it so)."""
        return torch.empty(n, dtype=torch.float32).uniform_(-self.rotation, self.rotation, generator=g)

    def _same_class(self, anchors: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """For each anchor, a sample of its class drawn uniformly (``random.choice(classwise[y])``)."""
        labels = self.labels.cpu()
        by_class = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels)
        starts = torch.cumsum(counts, 0) - counts
        y = labels[anchors]
        pick = (torch.rand(len(anchors), generator=g, dtype=torch.float64) * counts[y]).long()
        return by_class[starts[y] + pick]

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> ``(x - 255 mean) / (255 std)`` in float32 (the subtraction promotes: no extra pass),
        then ``dtype``; keeps the memory format of ``x``."""
        if self.channels_last and not self.train:
            x = x.contiguous(memory_format=torch.channels_last)
        x = torch.sub(x, self._mean).div_(self._std)
        return x if self.dtype == torch.float32 else x.to(self.dtype)

    def _augment(self, idx: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """uint8 crops of samples ``idx`` at (top, left) of the padded image, mirrored where ``flip``."""
        flip = flip.to(torch.bool)
        left = torch.where(flip, 2 * self.padding - left, left)
        return self._gather(flip.long(), idx, top, left)

    def _rotate(self, x: torch.Tensor, angles: torch.Tensor | None) -> torch.Tensor:
        if angles is None:
            return x
        x = rotate_nearest(x, angles.tolist())
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def _gather(self, flip, idx, top, left) -> torch.Tensor:
        x = self._windows[flip, idx, top, left]  # B x C x H x W
        # the gather keeps the storage's layout; the conversion is a no-op unless a backend differs
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    @property
    def num_views(self) -> int:
        """Distinct augmented views of one training image: (2p + 1)^2 crop offsets x 2 flips (1 without);
        None when a random rotation makes them unbounded."""
        if self.rotation:
            return None
        return (2 if self.flip else 1) * (2 * self.padding + 1) ** 2 if self.train else 1

    def view_ids(self, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """``flip * K^2 + top * K + left`` (K = 2p + 1): which of the ``num_views`` views a sample got."""
        k = 2 * self.padding + 1
        return flips.long() * k * k + offsets[:, 0] * k + offsets[:, 1]

    def __iter__(self):
        """``(images, labels, indices)`` batches."""
        for images, labels, idx, _ in self.batches():
            yield images, labels, idx

    def batches(self):
        """``(images, labels, indices, views)`` batches: ``views`` (int64, see :meth:`view_ids`) says which
        augmented view of each sample the batch holds (None for a test loader), so that per-view results
        of a frozen model can be cached exactly (:mod:`kdbench.teacher_cache`)."""
        n, bs = self._epoch_length(), self.batch_size
        stop = (n // bs) * bs if self.drop_last else n
        if not self.train:
            for start in range(0, stop, bs):
                end = min(start + bs, stop)
                idx = torch.arange(start, end, device=self.device)
                yield self._normalise(self._data[start:end]), self.labels[start:end], idx, None
            return
        # the epoch's draws, per position in the epoch order, computed on the CPU and moved once
        plan = self.epoch_plan()
        order, flips = plan["order"], plan["flips"][plan["order"]]
        top = plan["offsets"][order, 0]
        left = torch.where(flips, 2 * self.padding - plan["offsets"][order, 1], plan["offsets"][order, 1])
        nb = self.device.type == "cuda"
        views = self.view_ids(plan["offsets"][order], flips)
        draws = [order, flips.long(), top, left, views]
        angles = [plan["angles"][order]] if self.rotation else [None]  # per epoch position, kept on the CPU
        if self.same_class_pairs:  # the partners' own draws, per epoch position like the anchors'
            p_flips, p_offsets = plan["partner_flips"], plan["partner_offsets"]
            p_left = torch.where(p_flips, 2 * self.padding - p_offsets[:, 1], p_offsets[:, 1])
            draws += [plan["partners"], p_flips.long(), p_offsets[:, 0], p_left, self.view_ids(p_offsets, p_flips)]
            angles.append(plan["partner_angles"] if self.rotation else None)
        if self.world > 1:
            pick = torch.arange(self.rank, self.world * n, self.world)
            draws = [t[pick] for t in draws]
            angles = [a if a is None else a[pick] for a in angles]
        draws = [t.to(self.device, non_blocking=nb) for t in draws]
        for start in range(0, stop, bs):
            batch = [t[start:start + bs] for t in draws]
            turns = [a if a is None else a[start:start + bs] for a in angles]
            idx, views = batch[0], batch[4]
            x = self._rotate(self._gather(batch[1], idx, batch[2], batch[3]), turns[0])
            if self.same_class_pairs:
                idx, views = torch.cat([idx, batch[5]]), torch.cat([views, batch[9]])
                x = torch.cat([x, self._rotate(self._gather(batch[6], batch[5], batch[7], batch[8]), turns[1])])
            yield self._normalise(x), self.labels[idx], idx, (None if self.rotation else views)

    def __repr__(self) -> str:
        return (f"DeviceLoader(n={self.num_samples}, batch_size={self.batch_size}, train={self.train}, "
                f"device={self.device}, epoch={self.epoch}, seed={self.seed})")
