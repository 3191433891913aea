"""MNIST: download through torchvision, and OUR reader of the idx files, shared by the real and the
synthetic dataset.

On-disk layout: what ``torchvision.datasets.MNIST(root, download=True)`` leaves in ``root``, i.e.
``MNIST/raw/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte}``, each beside the ``.gz`` archive it was extracted from. The reader takes
the plain file, else its ``.gz``.

idx format (http://yann.lecun.com/exdb/mnist/): a big-endian header, then the data row-major.
The header is the magic number -- two zero bytes, the element type (``0x08``: unsigned byte) and the
number of dimensions -- then every dimension as a big-endian uint32. Images: magic 2051
(``0x00000803``), dimensions N, 28, 28; labels: magic 2049 (``0x00000801``), dimension N.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from . import DatasetUnavailable, data_root, missing_folders, remove_empty

RAW = Path("MNIST", "raw")  # torchvision's raw_folder, relative to the dataset root
FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
UBYTE = 0x08


# ----------------------------------------------------------------------------------------- idx files
def find(base: Path, name: str, compressed: bool = False) -> Path | None:
    """``base/name`` if present, else ``base/name.gz``, else None (``compressed``: only ``name.gz``)."""
    for candidate in ([f"{name}.gz"] if compressed else [name, f"{name}.gz"]):
        path = Path(base) / candidate
        if path.is_file():
            return path
    return None


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (plain or gzip-compressed, by its ``.gz`` suffix) as a uint8 array."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic number)")
    dtype, ndim = raw[2], raw[3]
    if dtype != UBYTE or not 1 <= ndim <= 3:
        raise ValueError(f"{path}: expected an idx file of unsigned bytes with 1-3 dimensions, "
                         f"got type 0x{dtype:02x} with {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(shape)):
        raise ValueError(f"{path}: {len(raw) - header} data bytes for shape {shape}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding of a uint8 array with 1-3 dimensions."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 3:
        raise ValueError(f"idx files hold uint8 arrays with 1-3 dimensions, got {array.dtype} {array.shape}")
    return struct.pack(f">BBBB{array.ndim}I", 0, 0, UBYTE, array.ndim, *array.shape) + array.tobytes()


def write_idx(array: np.ndarray, path: Path) -> None:
    """Write ``array`` as an idx file; gzip-compressed if ``path`` ends in ``.gz`` (with no time stamp
    or file name in the gzip header, so the same array always gives the same bytes)."""
    data = idx_bytes(array)
    if Path(path).suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    Path(path).write_bytes(data)


def read_split(folder: Path, train: bool, compressed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The train (else test) split from ``folder`` (which holds ``MNIST/raw/``) -> uint8 ``N x 1 x 28 x 28``
    contiguous, int64 ``N`` (CPU tensors). ``compressed``: from the ``.gz`` files only (the real
    dataset's archives, whose md5 is known)."""
    base = Path(folder) / RAW
    paths = [find(base, name, compressed) for name in FILES[train]]
    missing = [name for name, path in zip(FILES[train], paths) if path is None]
    if missing:
        raise FileNotFoundError(f"{base}: missing {', '.join(missing)} (or .gz)")
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3:  # magic 2051
        raise ValueError(f"{paths[0]}: expected an images file (magic {IMAGES_MAGIC}: N x H x W), "
                         f"got {images.ndim} dimension(s)")
    if labels.ndim != 1:  # magic 2049
        raise ValueError(f"{paths[1]}: expected a labels file (magic {LABELS_MAGIC}: N), "
                         f"got {labels.ndim} dimension(s)")
    if len(images) != len(labels):
        raise ValueError(f"{base}: {len(images)} images and {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{paths[1]}: labels outside 0..9")
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # N x 1 x H x W (copy: frombuffer is read-only)
    return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


def write_dataset(folder: Path, train: tuple, test: tuple) -> None:
    """Write ``(images uint8 N x 28 x 28, labels)`` of both splits under ``folder/MNIST/raw/`` as
    torchvision's download leaves them: every file as ``.gz`` and extracted."""
    base = Path(folder) / RAW
    base.mkdir(parents=True, exist_ok=True)
    for is_train, (images, labels) in ((True, train), (False, test)):
        for name, array in zip(FILES[is_train], (images, labels)):
            array = np.asarray(array, np.uint8)
            write_idx(array, base / name)
            write_idx(array, base / f"{name}.gz")


# ----------------------------------------------------------------------------------------- download
def md5s() -> dict[str, str]:
    """torchvision's md5 of the four archives, ``{"train-images-idx3-ubyte.gz": ..., ...}`` (a module
    attribute so that tests can replace it)."""
    from torchvision.datasets import MNIST
    return dict(MNIST.resources)


def damaged(folder: Path) -> list[str]:
    """The archives under ``folder/MNIST/raw`` that are missing or do not match their md5. Checked on
    every use, not only after a download: the real dataset is read from these verified archives."""
    from .cifar import intact
    return [name for name, md5 in md5s().items() if not intact(Path(folder) / RAW / name, md5)]


def is_complete(folder: Path) -> bool:
    return not damaged(folder)


DOWNLOAD_TIMEOUT = 60.0  # seconds without progress before a download is abandoned


def download(folder: Path) -> None:
    """torchvision's MNIST download (its mirrors, md5 check of every archive, extraction into
    ``folder/MNIST/raw``), with a socket timeout so a stalled connection fails instead of hanging.
    A module attribute so that tests can replace it."""
    import socket

    from torchvision.datasets import MNIST
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        MNIST(str(folder), train=False, download=True)  # downloads both splits; reads the small one back
    finally:
        socket.setdefaulttimeout(previous)


def _unavailable(folder: Path, reason: str) -> DatasetUnavailable:
    reason = " ".join(str(reason).split())
    return DatasetUnavailable(
        f"dataset mnist is missing from {folder} and could not be downloaded ({reason}); "
        f"set KDBENCH_DATA to a folder whose mnist/ holds {RAW.as_posix()}/, "
        f"or run offline with PRESET=smoke (synthetic-mnist)")


def ensure_mnist(root: Path | None = None, download_ok: bool = True) -> Path:
    """The folder ``root/mnist`` holding the four idx files, downloading them if needed."""
    folder = Path(root if root is not None else data_root()) / "mnist"
    if is_complete(folder):
        return folder
    if not download_ok:
        raise _unavailable(folder, "downloading is disabled")
    created = missing_folders(folder / RAW)  # what torchvision's download creates
    try:
        folder.mkdir(parents=True, exist_ok=True)
        download(folder)
    except (OSError, RuntimeError, EOFError) as exc:  # network/file errors; torchvision's md5 failure
        remove_empty(created)  # leave no empty folder behind (nor the data root, if it was not there)
        raise _unavailable(folder, f"{type(exc).__name__}: {exc}") from None
    bad = damaged(folder)
    if bad:  # torchvision does not download again while the extracted files exist
        raise _unavailable(folder, f"{', '.join(bad)} missing or not matching its md5 after the download; "
                                   f"delete {folder / RAW} to download it again")
    return folder


def load_mnist(train: bool, root: Path | None = None, download: bool = True):
    """The official split of MNIST via :func:`read_split`, from its md5-verified archives."""
    return read_split(ensure_mnist(root, download), train, compressed=True)


__all__ = ["FILES", "RAW", "damaged", "download", "ensure_mnist", "find", "idx_bytes", "load_mnist", "md5s", "read_idx",
           "read_split", "write_dataset", "write_idx"]
