"""``kdbench sweep``: the plan and its cost, local execution that skips recorded runs, and the
submitit path (its in-process debug executor) with a resumable job."""
import json

import pytest

from kdbench.cli import main
from kdbench.sweep import RunJob, expand, model_macs, run_macs

TINY = ["--set", "train.epochs=1", "--set", "teacher_train.epochs=1", "--set", "data_subset.train_per_class=2",
        "--set", "data_subset.test_per_class=2"]


def test_dry_run_plans_every_pair_and_costs_from_a_bench_measurement(sandbox, capsys):
    bench = sandbox / "bench.json"
    bench.write_text(json.dumps({"pair": "resnet20-resnet8", "device": "fixture-gpu", "kdbench_img_s": 1000.0}))
    assert main(["sweep", "dkd", "--seeds", "2", "--dry-run", "--rate-from", str(bench)]) == 0
    out = capsys.readouterr().out
    assert "22 runs, 0 already recorded, 22 to run" in out and "fixture-gpu-hours" in out
    rate = 1000.0 * (model_macs("resnet20", 32, 100) + 3 * model_macs("resnet8", 32, 100))
    (job,) = [j for j in expand("dkd", "paper", "resnet32x4-resnet8x4", [0], {})]
    expected = (model_macs("resnet32x4", 32, 100) + 3 * model_macs("resnet8x4", 32, 100)) * 50_000 * 240
    assert run_macs(job.cfg) == expected
    assert f"{expected / rate / 3600:9.2f} h" in out


def test_local_sweep_runs_then_skips_recorded_runs(sandbox, capsys):
    args = ["sweep", "kd", "--preset", "smoke", *TINY]
    assert main(args) == 0
    assert "1 runs recorded" in capsys.readouterr().out
    assert len(list((sandbox / "results" / "kd" / "smoke").rglob("seed0.json"))) == 1
    assert main(args) == 0
    assert "nothing to run" in capsys.readouterr().out
    assert main([*args, "--set", "train.lr=0.01"]) == 0  # another config is another run
    assert "1 runs recorded" in capsys.readouterr().out


def test_submitit_path_records_and_requeues_with_resume(sandbox, capsys):
    pytest.importorskip("submitit")
    assert main(["sweep", "kd", "--preset", "smoke", "--executor", "slurm", "--cluster", "debug", "--wait", *TINY]) == 0
    out = capsys.readouterr().out
    assert "submitted 1 jobs" in out and "best_top1" in out
    assert (sandbox / "results" / "kd" / "smoke" / "resnet20-resnet8" / "seed0.json").exists()
    resubmission = RunJob().checkpoint("kd", "smoke", "resnet20-resnet8", 0, {}, None)
    assert resubmission.kwargs["resume"] is True and isinstance(resubmission.function, RunJob)


def test_bad_paper_is_one_line(capsys, sandbox):
    assert main(["sweep", "nope", "--dry-run"]) == 2
    assert "\n" not in capsys.readouterr().err.strip()
