import copy
import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def one_thread_module():
    """torch on one thread for the tests of a module, restored afterwards."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Data, runs and results of a test live in its own temporary folder."""
    for var, sub in (("KDBENCH_DATA", "data"), ("KDBENCH_RUNS", "runs"), ("KDBENCH_RESULTS", "results")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path


def make_record(paper="dkd", preset="paper", pair="resnet32x4-resnet8x4", seed=0, best=76.0, last=75.8,
                dataset=None, epochs=None):
    """A results record as reproduce.run_one writes it (fixture input for check/leaderboard tests)."""
    from kdbench.config import resolve
    from kdbench.registry import get_paper
    p = get_paper(paper)
    cfg = resolve(paper, p.spec, preset, pair, seed)
    return {
        "schema": 1, "paper": paper, "method": "DKD", "dataset": dataset or cfg.dataset, "teacher": cfg.teacher,
        "student": cfg.student, "pair": pair, "preset": preset, "seed": seed,
        "epochs": epochs or cfg.train.epochs, "statistic": cfg.statistic, "best_top1": best, "best_epoch": 200,
        "best_top5": 93.0, "last_top1": last, "last_top5": 92.9, "reported_top1": best if cfg.statistic == "best" else last,
        "params": {"student": 1_233_540, "extra": 0}, "macs": 177_000_000, "latency": {},
        "teacher_info": {"source": "published"}, "device": "fixture", "torch": "fixture",
        "git_commit": "0" * 40, "git_dirty": False, "config": cfg.to_dict(), "wall_time_s": 1.0, "train_img_s": 1.0,
    }


def write_record(root: Path, rec: dict) -> Path:
    path = Path(root) / rec["paper"] / rec["preset"] / rec["pair"] / f"seed{rec['seed']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


@pytest.fixture
def record_factory():
    return lambda **kw: copy.deepcopy(make_record(**kw))
