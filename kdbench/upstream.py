"""Multi-stage recipes: runs that build on the trained student of another run.

A pair of a preset may declare ``teacher_from: <pair>`` (its teacher is that pair's trained student:
teacher assistants, born-again generations, self-distillation from a normally trained copy) or
``init_from: <pair>`` (its student starts from that pair's weights: a full-precision model before
quantisation). Either may be ``{pair: <pair>, checkpoint: best | last | <epoch>}`` when the upstream
recipe keeps those weights (``train.keep_checkpoints``). The upstream run is an ordinary run of the
same preset and seed, with its own record; it is trained when needed and reused when its run folder
holds a completed run of exactly the same config (digest), so a chain of N stages costs N runs once.
The record of a downstream run names every upstream run it used (pair, weights file, sha256, digest).
Overrides (``--set``) apply to every run of a chain alike, so ``--set train.epochs=2`` shortens all of
them; a setting meant for one stage only belongs in that pair's entry of ``paper.yaml``. Runs of a
sweep that share an upstream run should be ordered after it (two jobs racing to train the same
upstream run would both train it; the second to finish wins).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from . import checkpoint
from .config import RunConfig, UpstreamRun
from .errors import CheckpointError
from .teachers import sha256
from .train import kept_path

COMPLETE = "complete.json"


def weights_files(run_dir: Path) -> list[Path]:
    """The files a downstream run may take weights from: the last checkpoint and the kept weights of
    the main stage (see :func:`weights_file`)."""
    return sorted(Path(run_dir).glob("checkpoint-main.pt")) + sorted(Path(run_dir).glob("student-main-*.pt"))


def mark_complete(run_dir: Path, cfg: RunConfig, record: dict, record_path: Path) -> None:
    """Written last by a run: the config digest it completed, where its record is, and the sha256 of
    every weights file a downstream run may use, so that a file replaced afterwards is noticed."""
    checkpoint.atomic_write_json({"digest": cfg.digest(), "record": str(record_path),
                                  "best_top1": record["best_top1"], "last_top1": record["last_top1"],
                                  "weights": {p.name: sha256(p) for p in weights_files(run_dir)}},
                                 Path(run_dir) / COMPLETE)


def completed(run_dir: Path, cfg: RunConfig) -> dict | None:
    """The completion note of ``cfg`` in ``run_dir``, or None if absent or for another config."""
    path = Path(run_dir) / COMPLETE
    if not path.exists():
        return None
    try:
        note = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"completion note {path} is unreadable ({exc}); delete {run_dir} to retrain "
                              "that run") from None
    if not isinstance(note, dict):
        raise CheckpointError(f"completion note {path} is not a kdbench note; delete {run_dir} to retrain that run")
    return note if note.get("digest") == cfg.digest() else None


def weights_file(run_dir: Path, up: UpstreamRun) -> Path:
    return Path(run_dir) / "checkpoint-main.pt" if up.checkpoint == "last" else kept_path(run_dir, "main", up.checkpoint)


def student_weights(run_dir: Path, up: UpstreamRun, note: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """The upstream student's state dict and the provenance of the file it came from (``note``: the
    run's completion note)."""
    path = weights_file(run_dir, up)
    if not path.exists():
        raise CheckpointError(f"upstream run {up.pair} completed but {path} is missing; delete {run_dir} to retrain it")
    digest = sha256(path)
    recorded = (note.get("weights") or {}).get(path.name)  # notes written before digests were kept have none
    if recorded is not None and recorded != digest:
        raise CheckpointError(f"upstream run {up.pair}: {path} was replaced after the run completed (sha256 "
                              f"{digest}, recorded {recorded} in {Path(run_dir) / COMPLETE}); delete {run_dir} "
                              "to retrain it")
    saved = checkpoint.load(path)
    state = checkpoint.section(saved, "model", path)
    if up.checkpoint == "last":  # the trainer's checkpoint holds the whole distiller: keep the student
        state = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
    top1 = saved.get("top1") if up.checkpoint != "last" else note.get("last_top1")
    info = {"pair": up.pair, "checkpoint": up.checkpoint, "path": str(path), "sha256": digest,
            "config_digest": up.config.digest(), "record": note.get("record"), "top1": top1}
    return state, info


def ensure_upstream(up: UpstreamRun, run_dir_of, train, log) -> tuple[dict[str, torch.Tensor], dict]:
    """Train the upstream run unless a completed run of the same config exists; return its weights."""
    run_dir = run_dir_of(up.config)
    note = completed(run_dir, up.config)
    if note is None:
        log(f"stage {up.pair} (seed {up.config.seed}) has no completed run of this config: training it")
        train(up.config)
        note = completed(run_dir, up.config) or {}  # written by process 0 (others wait at a barrier)
    else:
        log(f"stage {up.pair} (seed {up.config.seed}): reusing the completed run in {run_dir}")
    return student_weights(run_dir, up, note)


class LogitEnsemble(nn.Module):
    """A teacher made of several trained students (``teacher_from: [pair, ...]``): the mean of their
    logits. Each member is loaded strictly from its upstream weights (``paths``: the files they came
    from, named if they do not fit)."""

    def __init__(self, members: list[nn.Module], states: list[dict], paths: list | None = None):
        super().__init__()
        paths = paths or [f"of ensemble member {i}" for i in range(len(members))]
        for model, state, path in zip(members, states, paths, strict=True):
            checkpoint.load_state_strict(model, state, path)
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)
