"""``kdbench sweep``: the plan and its cost, local execution that skips recorded runs and resumes interrupted
ones (a failing run does not stop the others), and the submitit path (its in-process debug executor) with a
resumable job."""
import json

import pytest
import torch

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


NOISY = ["sweep", "noisy_teachers", "--preset", "smoke", "--set", "train.epochs=3", "--set", "teacher_train.epochs=1",
         "--set", "data_subset.train_per_class=4", "--set", "data_subset.test_per_class=2"]
NOISELESS = "noisy_teachers/smoke/mlp_1200_1200-mlp_800_800_noiseless/seed0"


class Killed(BaseException):
    """Stands for the process being killed: nothing catches it."""


def test_resubmitted_sweep_skips_the_completed_run_and_resumes_the_half_done_one(sandbox, capsys, monkeypatch,
                                                                               one_thread_module):
    from kdbench import checkpoint
    real = checkpoint.atomic_save

    def killed_in_epoch_2_of_the_noiseless_run(obj, path):  # the noisy pair runs first and completes
        if "noiseless" in str(path) and path.name == "checkpoint-main.pt" and obj["trainer"]["epoch"] == 2:
            raise Killed
        real(obj, path)
    monkeypatch.setattr(checkpoint, "atomic_save", killed_in_epoch_2_of_the_noiseless_run)
    with pytest.raises(Killed):
        main(NOISY)
    monkeypatch.setattr(checkpoint, "atomic_save", real)
    recorded = sandbox / "results/noisy_teachers/smoke/mlp_1200_1200-mlp_800_800/seed0.json"
    mtime = recorded.stat().st_mtime_ns
    assert not (sandbox / "results" / f"{NOISELESS}.json").exists()
    capsys.readouterr()

    assert main([*NOISY, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "running noisy_teachers/smoke/mlp_1200_1200-mlp_800_800_noiseless/seed0" in out
    assert "running noisy_teachers/smoke/mlp_1200_1200-mlp_800_800/seed0" not in out
    assert "resumed main from epoch 1" in out and "[main] epoch 1/3" not in out
    assert "done: 1 runs recorded, 0 failed, 1 skipped" in out
    assert recorded.stat().st_mtime_ns == mtime
    resumed = json.loads((sandbox / "results" / f"{NOISELESS}.json").read_text())

    # the same run never interrupted
    for var, sub in (("KDBENCH_RUNS", "runs2"), ("KDBENCH_RESULTS", "results2")):
        monkeypatch.setenv(var, str(sandbox / sub))
    assert main([*NOISY, "--pair", "mlp_1200_1200-mlp_800_800_noiseless"]) == 0
    whole = json.loads((sandbox / "results2" / f"{NOISELESS}.json").read_text())
    assert (resumed["best_top1"], resumed["last_top1"]) == (whole["best_top1"], whole["last_top1"])
    a = checkpoint.load(sandbox / "runs" / NOISELESS / "checkpoint-main.pt")["model"]
    b = checkpoint.load(sandbox / "runs2" / NOISELESS / "checkpoint-main.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_a_run_failing_on_a_non_finite_loss_does_not_stop_the_sweep(sandbox, capsys, one_thread_module):
    """An infinite noise variance breaks the noisy pair; the noiseless pair draws no noise and is recorded."""
    assert main([*NOISY, "--set", "method.noise_variance=.inf"]) == 1
    out = capsys.readouterr().out
    assert "FAILED noisy_teachers/smoke/mlp_1200_1200-mlp_800_800/seed0: non-finite loss loss_l2=inf at epoch 1" in out
    assert "done: 1 runs recorded, 1 failed, 0 skipped" in out
    assert [p.parent.name for p in (sandbox / "results").rglob("seed0.json")] == ["mlp_1200_1200-mlp_800_800_noiseless"]
