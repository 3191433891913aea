"""CIFAR-100 / CIFAR-10: download (torchvision's URLs and md5s), and OUR reader of the "python
version" pickles, shared by the real and the synthetic datasets.

On-disk format (https://www.cs.toronto.edu/~kriz/cifar.html), pickled by Python 2 (protocol 2):

* CIFAR-100 ``cifar-100-python/{train,test}``: ``{b"filenames": [bytes], b"batch_label": bytes,
  b"fine_labels": [int], b"coarse_labels": [int], b"data": uint8 ndarray N x 3072}``;
  ``meta``: ``{b"fine_label_names": [bytes], b"coarse_label_names": [bytes]}``.
* CIFAR-10 ``cifar-10-batches-py/data_batch_1..5, test_batch``: ``{b"batch_label", b"labels",
  b"data", b"filenames"}``; ``batches.meta``: ``{b"num_cases_per_batch", b"label_names", b"num_vis"}``.

A row of ``data`` is the 32 x 32 image as three channel planes (1024 R, then G, then B), each row-major,
so ``data.reshape(N, 3, 32, 32)`` is NCHW without a copy. The writer below produces the same bytes a
Python 2 ``cPickle.dump(d, f, 2)`` would (byte strings as py2 ``str``), so a synthetic file is
readable by this reader, by torchvision's ``CIFAR100`` and by Python 2 code alike.
"""
from __future__ import annotations

import http.client
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from struct import pack

import numpy as np
import torch

from . import DatasetUnavailable, data_root, missing_folders, remove_empty


@dataclass(frozen=True)
class Layout:
    """File names and keys of one CIFAR variant (identical for the real and the synthetic copy)."""

    name: str  # "cifar100" | "cifar10"
    folder: str  # the folder the official archive extracts to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes  # the meta key holding the class names
    num_classes: int

    def files(self, train: bool) -> tuple[str, ...]:
        return self.train_files if train else self.test_files


LAYOUTS = {
    "cifar100": Layout("cifar100", "cifar-100-python", ("train",), ("test",), "meta",
                       b"fine_labels", b"fine_label_names", 100),
    "cifar10": Layout("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                      ("test_batch",), "batches.meta", b"labels", b"label_names", 10),
}


# ----------------------------------------------------------------------------------------- reading
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0, np.uint8))[0]  # numpy's array constructor
_SCALAR = np.int64(0).__reduce__()[0]  # numpy's scalar constructor


class _Unpickler(pickle.Unpickler):
    """Loads only what a CIFAR pickle holds (containers, numbers, bytes, numpy arrays): a file
    under the data folder can never run code."""

    def find_class(self, module, name):
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            # py2 files name numpy.core; numpy 2 keeps these in numpy._core (no deprecation detour)
            if name == "_reconstruct":
                return _RECONSTRUCT
            if name == "scalar":
                return _SCALAR
        if (module, name) == ("_codecs", "encode"):  # py3 protocol-2 bytes
            import codecs
            return codecs.encode
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR pickle")


def unpickle(path: Path) -> dict:
    """One CIFAR pickle, keys and strings as ``bytes`` (``encoding="bytes"``, as for py2 files)."""
    with open(path, "rb") as fh:
        obj = _Unpickler(fh, encoding="bytes").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")
    # py2 files give bytes keys; a file re-pickled by Python 3 may have str keys: accept both
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _read_batch(path: Path, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    d = unpickle(path)
    missing = {b"data", layout.label_key} - set(d)
    if missing:
        raise ValueError(f"{path}: not a {layout.name} batch (missing keys {sorted(missing)})")
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[layout.label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: data must be uint8 N x 3072 with N labels, got {data.dtype} "
                         f"{data.shape} and {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise ValueError(f"{path}: labels outside 0..{layout.num_classes - 1}")
    return data, labels


def read_split(folder: Path, layout: str | Layout, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the train (else test) split from ``folder`` (which holds ``cifar-100-python/`` or
    ``cifar-10-batches-py/``) -> uint8 ``N x 3 x 32 x 32`` contiguous, int64 ``N`` (CPU tensors)."""
    layout = LAYOUTS[layout] if isinstance(layout, str) else layout
    base = Path(folder) / layout.folder
    parts = [_read_batch(base / f, layout) for f in layout.files(train)]
    data = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32))
    return images, torch.from_numpy(np.ascontiguousarray(labels))


def read_meta(folder: Path, layout: str | Layout) -> dict[str, list[str]]:
    """Class names from the meta file: ``{"label_names": [...]}`` (+ ``"coarse_label_names"``)."""
    layout = LAYOUTS[layout] if isinstance(layout, str) else layout
    d = unpickle(Path(folder) / layout.folder / layout.meta_file)
    def text(names):
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    out = {"label_names": text(d[layout.names_key])}
    if b"coarse_label_names" in d:
        out["coarse_label_names"] = text(d[b"coarse_label_names"])
    return out


# ----------------------------------------------------------------------------------------- writing


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes ``bytes`` and ``str`` as Python 2 ``str`` (BINSTRING) and names
    numpy's array constructor ``numpy.core.multiarray._reconstruct`` -- the bytes of the real files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2str(self, obj):
        raw = obj.encode("ascii") if isinstance(obj, str) else bytes(obj)
        n = len(raw)
        self.write((pickle.SHORT_BINSTRING + pack("<B", n) if n < 256 else pickle.BINSTRING + pack("<i", n)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2str
    dispatch[str] = _save_py2str

    def save_global(self, obj, name=None):
        if obj is _RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def write_pickle(obj: dict, path: Path) -> None:
    """Write ``obj`` as a Python 2 protocol-2 pickle (like the official CIFAR files)."""
    with open(path, "wb") as fh:
        _Py2Pickler(fh, protocol=2).dump(obj)


def write_dataset(folder: Path, layout: str | Layout, train: tuple, test: tuple, names: list[str],
                  coarse_names: list[str] | None = None) -> None:
    """Write a dataset in the official format under ``folder/<layout.folder>/``.

    ``train`` / ``test``: ``(images uint8 N x 3 x 32 x 32, labels, coarse_labels or None, filenames)``.
    CIFAR-10's training set is split into its five ``data_batch_*`` files as the original is.
    """
    layout = LAYOUTS[layout] if isinstance(layout, str) else layout
    base = Path(folder) / layout.folder
    base.mkdir(parents=True, exist_ok=True)
    for is_train, (images, labels, coarse, filenames) in ((True, train), (False, test)):
        images = np.asarray(images, dtype=np.uint8)
        data = np.ascontiguousarray(images.reshape(len(images), 3072))
        files = layout.files(is_train)
        chunks = np.array_split(np.arange(len(data)), len(files))
        for i, (fname, idx) in enumerate(zip(files, chunks)):
            kind = "training" if is_train else "testing"
            batch = {b"filenames": [bytes(filenames[j]) for j in idx],
                     b"batch_label": f"{kind} batch {i + 1} of {len(files)}".encode()}
            if layout.name == "cifar100":
                batch[b"fine_labels"] = [int(labels[j]) for j in idx]
                batch[b"coarse_labels"] = [int(coarse[j]) for j in idx]
            else:
                batch[b"labels"] = [int(labels[j]) for j in idx]
            batch[b"data"] = data[idx[0]:idx[-1] + 1] if len(idx) else data[:0]
            write_pickle(batch, base / fname)
    if layout.name == "cifar100":
        meta = {b"fine_label_names": [n.encode() for n in names],
                b"coarse_label_names": [n.encode() for n in coarse_names]}
    else:
        meta = {b"num_cases_per_batch": len(chunks[0]) if len(train[0]) else 0,
                b"label_names": [n.encode() for n in names], b"num_vis": 3072}
    write_pickle(meta, base / layout.meta_file)


# ---------------------------------------------------------------------------------------- download
def _torchvision_source(name: str):
    """torchvision's dataset class for ``name``: its ``url``, ``filename``, ``tgz_md5``,
    ``base_folder``, ``train_list``, ``test_list`` and ``meta`` are the official ones."""
    from torchvision.datasets import CIFAR10, CIFAR100
    return {"cifar100": CIFAR100, "cifar10": CIFAR10}[name]


SOURCES: dict[str, dict] = {}


def source(name: str) -> dict:
    """``{"url", "filename", "md5", "folder", "files": {file: md5}}`` of the official archive."""
    if name not in SOURCES:
        cls = _torchvision_source(name)
        files = {f: md5 for f, md5 in cls.train_list + cls.test_list}
        files[cls.meta["filename"]] = cls.meta["md5"]
        SOURCES[name] = {"url": cls.url, "filename": cls.filename, "md5": cls.tgz_md5,
                         "folder": cls.base_folder, "files": files}
    return SOURCES[name]


_VERIFIED: dict[tuple, bool] = {}  # (path, size, mtime) -> md5 ok; a file is hashed once per process


def intact(path: Path, md5: str) -> bool:
    """``path`` exists and has this md5 (hashed once per process while its size and mtime stay)."""
    from torchvision.datasets.utils import check_integrity
    try:
        st = path.stat()
    except OSError:
        return False
    key = (str(path), st.st_size, st.st_mtime_ns, md5)
    if key not in _VERIFIED:
        _VERIFIED[key] = check_integrity(str(path), md5)
    return _VERIFIED[key]


def is_complete(folder: Path, name: str) -> bool:
    src = source(name)
    return all(intact(Path(folder) / src["folder"] / f, md5) for f, md5 in src["files"].items())


DOWNLOAD_TIMEOUT = 60.0  # seconds without progress before a download is abandoned


def download_url(url: str, root: str, filename: str, md5: str) -> None:
    """torchvision's downloader (a module attribute so tests can replace it), with a socket timeout
    so that a stalled connection fails instead of hanging (torchvision sets none)."""
    import socket

    from torchvision.datasets.utils import download_url as tv_download_url
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        tv_download_url(url, root, filename=filename, md5=md5)
    finally:
        socket.setdefaulttimeout(previous)


# what a failed download / extraction raises: network and file errors (URLError is an OSError),
# torchvision's "File not found or corrupted." md5 RuntimeError, and broken archives
_DOWNLOAD_ERRORS = (OSError, http.client.HTTPException, RuntimeError, tarfile.TarError, EOFError, zlib.error)


def _unavailable(name: str, folder: Path, reason: str) -> DatasetUnavailable:
    reason = " ".join(str(reason).split())  # one line, whatever the exception text holds
    return DatasetUnavailable(
        f"dataset {name} is missing from {folder} and could not be downloaded ({reason}); "
        f"set KDBENCH_DATA to a folder whose {name}/ holds {source(name)['folder']}/, "
        f"or run offline with PRESET=smoke (synthetic-cifar100)")


def ensure_cifar(name: str, root: Path | None = None, download: bool = True) -> Path:
    """The folder ``root/<name>`` holding the verified official files, downloading them if needed."""
    folder = Path(root if root is not None else data_root()) / name
    if is_complete(folder, name):
        return folder
    if not download:
        raise _unavailable(name, folder, "downloading is disabled")
    src = source(name)
    created = missing_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        download_url(src["url"], str(folder), src["filename"], src["md5"])
        # extract next to the target and move the verified folder in: never a half-written dataset
        with tempfile.TemporaryDirectory(dir=folder, prefix=".extract-") as tmp:
            with tarfile.open(folder / src["filename"], "r:*") as tar:
                # the archive's md5 is verified; the "data" filter still refuses paths outside tmp
                tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            if not is_complete(Path(tmp), name):
                raise RuntimeError(f"{src['filename']} does not hold the expected files")
            target = folder / src["folder"]
            if target.exists():
                shutil.rmtree(target)
            os.replace(Path(tmp) / src["folder"], target)
    except _DOWNLOAD_ERRORS as exc:
        remove_empty(created)  # leave no empty folder behind (nor the data root, if it was not there)
        raise _unavailable(name, folder, f"{type(exc).__name__}: {exc}") from None
    if not is_complete(folder, name):
        raise _unavailable(name, folder, "files do not match their md5 after extraction")
    (folder / src["filename"]).unlink(missing_ok=True)  # the archive is no longer needed
    return folder


def load_cifar(name: str, train: bool, root: Path | None = None, download: bool = True):
    """The official split of real CIFAR-100/10 via :func:`read_split`."""
    folder = ensure_cifar(name, root, download)
    return read_split(folder, LAYOUTS[name], train)
