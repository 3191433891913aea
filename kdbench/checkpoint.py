"""Files kdbench writes and the checkpoints it loads.

Writing: every checkpoint, record, note and page goes to a temporary file in the target's folder, is
flushed to disk and only then renamed over the target, so a crash, a kill or a full disk leaves the
previous file (or none), never a truncated one; concurrent writers of one path leave one complete
winner. A writer killed outright (SIGKILL, power loss) cannot remove its temporary file
``.<name>.<random>.tmp``; no reader matches that name.

Loading: ``weights_only=True`` always (a checkpoint can never run code), and a file that cannot be
read is one line naming it (:class:`~kdbench.errors.CheckpointError`), never a traceback. torch does
not check the CRC-32 its zip format stores for every member, so a flipped bit in a tensor would load
silently as a different weight: :func:`load` checks every member's CRC-32 first. That covers every
checkpoint kdbench writes itself (run checkpoints for ``--resume``, kept weights, trained teachers).
Files obtained elsewhere are in addition checked by sha256 against a digest known before they are
used (kdbench.teachers: pinned, or recorded on first use; an upstream run's weights: recorded in its
completion note), which also covers the legacy non-zip format that has no CRC at all.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, DiskFull

_NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def _atomic(path: Path, write) -> None:
    path = Path(path)
    try:
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
    except OSError as exc:
        if exc.errno in _NO_SPACE and not isinstance(exc, DiskFull):
            raise DiskFull(exc.errno, f"{_NO_SPACE[exc.errno]} while writing {path}") from exc
        raise


def _torch_save(obj, fh) -> None:
    try:
        torch.save(obj, fh)
    except RuntimeError as exc:  # torch reports a failed write as "enforce fail ... unexpected pos"
        if isinstance(exc.__context__, OSError):
            raise exc.__context__ from None  # the write's own error (e.g. ENOSPC) says what happened
        raise


def discard_partial(folder) -> None:
    """Delete what killed atomic writes left in ``folder`` (their temporary files; the targets are intact)."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def atomic_save(obj, path) -> None:
    _atomic(path, lambda fh: _torch_save(obj, fh))


def atomic_write_text(text: str, path) -> None:
    _atomic(path, lambda fh: fh.write(text.encode()))


def atomic_write_json(obj, path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def atomic_savefig(fig, path, **kwargs) -> None:
    """A matplotlib figure, in the format its file name says (``.png``)."""
    _atomic(path, lambda fh: fig.savefig(fh, format=Path(path).suffix[1:], **kwargs))


def _reason(exc: BaseException) -> str:
    """The first line of an exception, short enough for a one-line error."""
    text = " ".join((str(exc).strip().splitlines() or [""])[0].split())
    text = text if len(text) <= 120 else text[:117] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load(path, map_location="cpu"):
    """Load a checkpoint with ``weights_only=True`` (no arbitrary pickles), after checking the CRC-32
    of every member of a zip-format file. A missing, truncated or damaged file, or one that is not a
    weights-only checkpoint, is a :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing")
    try:
        with open(path, "rb") as fh:
            zipped = fh.read(4) == b"PK\x03\x04"  # torch's format since 1.6 (before: a bare pickle)
        if zipped and not zipfile.is_zipfile(path):
            raise CheckpointError(f"checkpoint {path} is truncated: its zip archive lacks its end (central directory); "
                                  "delete it to download or train it again")
        if zipped:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            if bad is not None:
                raise CheckpointError(f"checkpoint {path} is damaged: its member {bad} fails the CRC-32 check; "
                                      "delete it to download or train it again")
        return torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 (whatever a damaged file makes the unzipper or unpickler raise)
        raise CheckpointError(f"checkpoint {path} is unreadable ({_reason(exc)}): truncated, damaged or not a "
                              "weights-only checkpoint; delete it to download or train it again") from None


def section(saved, key: str, path):
    """``saved[key]`` of a loaded checkpoint, or a :class:`CheckpointError` if the file has no such entry."""
    if not isinstance(saved, Mapping) or key not in saved:
        held = sorted(map(str, saved))[:5] if isinstance(saved, Mapping) else type(saved).__name__
        raise CheckpointError(f"checkpoint {path} holds no {key!r} entry (it holds {held}); "
                              "it is not a kdbench or RepDistiller checkpoint")
    return saved[key]


def _classifier(model: nn.Module) -> str | None:
    """Name of the model's last linear layer (its classifier in every zoo model), or None."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _first(keys, n: int = 3) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _mismatch(expected: Mapping, state, classifier: str | None) -> str | None:
    """Why ``state`` does not fit a model whose state dict is ``expected``, in one line; None if it fits."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return f"it holds a {type(state).__name__}, not a state dict of tensors"
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"{len(keys)} {kind} key(s) ({_first(keys)})"
                 for kind, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        hint = ("; its keys carry a 'module.' prefix (strip_prefix)"
                if unexpected and all(k.startswith("module.") for k in unexpected) else "")
        return f"{' and '.join(parts)}: it holds another architecture{hint}"
    for key in (f"{classifier}.weight", f"{classifier}.bias") if classifier else ():
        if key in expected and state[key].shape[:1] != expected[key].shape[:1]:
            return (f"classifier {classifier} has {state[key].shape[0]} outputs, the model expects "
                    f"{expected[key].shape[0]}: wrong number of classes")
    for key, value in expected.items():
        if state[key].shape != value.shape:
            return (f"{key} has shape {tuple(state[key].shape)}, the model expects {tuple(value.shape)}: "
                    "it holds another architecture")
    return None


def load_state_strict(model: nn.Module, state, path) -> nn.Module:
    """``model.load_state_dict(state, strict=True)``, with a mismatch as one line naming ``path``
    (missing/unexpected keys, or a shape such as the classifier's number of classes)."""
    problem = _mismatch(model.state_dict(), state, _classifier(model))
    if problem:
        raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: {problem}")
    model.load_state_dict(state, strict=True)
    return model


def check_resume(saved: dict, distiller: nn.Module, path) -> dict:
    """``saved`` (a trainer checkpoint loaded by :func:`load`, for ``--resume``) if it holds the trainer's
    sections and weights fitting ``distiller`` (all but the frozen teacher, which is reloaded from its own
    file); one of another run or recipe is one line naming the file (:class:`CheckpointError`)."""
    for key in ("model", "optimizer", "trainer"):
        section(saved, key, path)
    expected = {k: v for k, v in distiller.state_dict().items() if not k.startswith("teacher.")}
    classifier = _classifier(distiller.student)
    problem = _mismatch(expected, saved["model"], classifier and f"student.{classifier}")
    if problem:
        raise CheckpointError(f"checkpoint {path} is not one of this run ({problem}); delete it or run "
                              "without --resume")
    return saved
