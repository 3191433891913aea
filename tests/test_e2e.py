"""End to end: the DKD smoke reproduction through the CLI, resume, the cached teacher, the record."""
import json

import pytest

from kdbench.cli import main
from kdbench.results import REQUIRED

FAST = ["--set", "data_subset.train_per_class=12", "--set", "train.epochs=2", "--set", "teacher_train.epochs=2",
        "--latency-iters", "3"]


@pytest.mark.slow
def test_smoke_reproduction_end_to_end(sandbox, capsys):
    assert main(["reproduce", "dkd", "--preset", "smoke", *FAST]) == 0
    out = capsys.readouterr().out
    assert "training teacher resnet20 on synthetic-cifar100" in out
    (path,) = (sandbox / "results").glob("dkd/smoke/resnet20-resnet8/seed0.json")
    rec = json.loads(path.read_text())
    assert set(REQUIRED) <= set(rec)
    assert rec["dataset"] == "synthetic-cifar100" and rec["epochs"] == 2 and rec["method"] == "DKD"
    assert rec["teacher_info"]["source"] == "train" and rec["params"]["student"] == 83_892
    assert 0.0 <= rec["last_top1"] <= rec["best_top1"] <= 100.0 and rec["best_top1"] > 1.0  # above chance
    assert rec["macs"] > 0 and rec["latency"]["batch1"]["median_ms"] > 0 and rec["config"]["method"]["beta"] == 8.0
    log = [json.loads(l) for l in (sandbox / "runs/dkd/smoke/resnet20-resnet8/seed0/log-main.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in log] == [1, 2] and {"loss_ce", "loss_kd", "test_top1", "lr"} <= set(log[0])

    # a second paper with the same smoke teacher recipe reuses the cached teacher
    assert main(["reproduce", "kd", "--preset", "smoke", *FAST]) == 0
    out = capsys.readouterr().out
    assert "training teacher" not in out
    kd = json.loads((sandbox / "results/kd/smoke/resnet20-resnet8/seed0.json").read_text())
    assert kd["teacher_info"]["sha256"] == rec["teacher_info"]["sha256"]

    # resume of a finished run trains nothing and writes the same result
    assert main(["reproduce", "dkd", "--preset", "smoke", "--resume", *FAST]) == 0
    out = capsys.readouterr().out
    assert "resumed main from epoch 2" in out and "epoch 1/2" not in out
    assert json.loads(path.read_text())["best_top1"] == rec["best_top1"]
