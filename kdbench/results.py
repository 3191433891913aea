"""Run records: one JSON file per run under ``results/``, written atomically."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import torch

from .checkpoint import atomic_write_json
from .errors import UsageError

SCHEMA = 1
REQUIRED = ("paper", "method", "dataset", "teacher", "student", "pair", "preset", "seed", "epochs",
            "best_top1", "best_epoch", "last_top1", "params", "device", "torch", "git_commit", "config")


def results_root() -> Path:
    return Path(os.environ.get("KDBENCH_RESULTS", "results"))


def record_path(root: Path, paper: str, preset: str, pair: str, seed: int) -> Path:
    return Path(root) / paper / preset / pair / f"seed{seed}.json"


def git_state(cwd: Path | None = None) -> dict:
    """Commit of the code that ran, and whether kdbench/ or reproductions/ had local edits."""
    cwd = cwd or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "kdbench", "reproductions"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip() != ""
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}


def write(record: dict, root: Path | None = None) -> Path:
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"results record lacks {missing}")
    path = record_path(root or results_root(), record["paper"], record["preset"], record["pair"], record["seed"])
    atomic_write_json({"schema": SCHEMA, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       **record}, path)
    return path


def read_json(path: Path, what: str) -> dict:
    """A JSON object kdbench wrote (``what``: "results record", ...). One that cannot be read is a
    one-line error naming it: a leaderboard or check that silently left a run out would be wrong."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, or bytes that are not UTF-8
        raise UsageError(f"{what} {path} is unreadable ({exc}); delete it or write it again") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{what} {path} holds a JSON {type(obj).__name__}, not an object; delete it or write it again")
    return obj


def load_all(root: Path | None = None) -> list[dict]:
    """Every record under ``root``, each with ``_path`` set to where it was read from. A record that is
    damaged, of another schema or incomplete stops the reader with one line naming it (a temporary file
    of an interrupted write, ``.seed0.json.<random>.tmp``, is not a record and is not read)."""
    root = Path(root or results_root())
    out = []
    for path in sorted(root.glob("*/*/*/seed*.json")):
        rec = read_json(path, "results record")
        if rec.get("schema") != SCHEMA:
            raise UsageError(f"results record {path} has schema {rec.get('schema')!r}; this kdbench reads schema "
                             f"{SCHEMA}: re-run it or move it out of {root}")
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            raise UsageError(f"results record {path} lacks {missing}; re-run it or move it out of {root}")
        rec["_path"] = str(path)
        out.append(rec)
    return out


def environment() -> dict:
    return {"torch": torch.__version__, **git_state()}
