"""Runs side by side on one device give exactly the records of the same runs made one after another."""
import json
import os

import torch

from kdbench.cli import main
from kdbench.parallel import auto_parallel

TINY = ["--set", "train.epochs=2", "--set", "teacher_train.epochs=1", "--set", "data_subset.train_per_class=3",
        "--set", "data_subset.test_per_class=2"]
KEYS = ("best_top1", "best_epoch", "last_top1", "last_top5", "seed", "config")


def records(root):
    return {p.name: {k: json.loads(p.read_text())[k] for k in KEYS} for p in sorted(root.rglob("seed*.json"))}


def test_side_by_side_equals_one_after_another(sandbox, capsys):
    threads = max(1, (os.cpu_count() or 1) // 2)  # what each of the two children gets
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert main(["reproduce", "kd", "--preset", "smoke", "--seed", "0,1", "--parallel", "1",
                     "--results-dir", str(sandbox / "one"), "--latency-iters", "2", *TINY]) == 0
    finally:
        torch.set_num_threads(before)
    assert main(["reproduce", "kd", "--preset", "smoke", "--seed", "0,1", "--parallel", "2",
                 "--results-dir", str(sandbox / "two"), "--latency-iters", "2", *TINY]) == 0
    out = capsys.readouterr().out
    assert out.count("started kd/smoke") == 2 and "2 runs recorded, 0 failed" in out
    one, two = records(sandbox / "one"), records(sandbox / "two")
    assert set(one) == {"seed0.json", "seed1.json"} and one == two


def test_a_failing_child_is_reported_with_its_log(sandbox, capsys, monkeypatch):
    # no published teacher offline: each child fails at run time (exit 1), after the plan was accepted
    monkeypatch.setenv("KDBENCH_TEACHERS_URL", (sandbox / "nowhere.tar").as_uri())
    code = main(["reproduce", "kd", "--preset", "smoke", "--seed", "0,1", "--parallel", "2",
                 "--set", "teacher_source=published", *TINY])
    out = capsys.readouterr().out
    assert code == 1 and out.count("FAILED kd/smoke") == 2 and "0 runs recorded, 2 failed" in out
    assert "could not be downloaded" in out  # the tail of the child's log
    assert main(["reproduce", "kd", "--preset", "smoke", "--seed", "0,1", "--parallel", "0"]) == 2
    assert "--parallel" in capsys.readouterr().err


def test_auto_parallel_is_one_off_cuda():
    assert auto_parallel(torch.device("cpu"), 5) == 1
