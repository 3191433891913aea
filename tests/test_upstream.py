"""Multi-stage recipes (teacher_from / init_from) and claims: one general mechanism for every paper."""
import copy
import json
from pathlib import Path

import pytest
import torch

from kdbench import checkpoint
from kdbench.check import evaluate_claims
from kdbench.config import resolve
from kdbench.errors import UsageError
from kdbench.models import create_model
from kdbench.registry import Paper, get_paper
from kdbench.reproduce import pick_device, plan, run_dir_of, run_one

SPEC = {
    "paper": "chain", "title": "chain fixture", "method": "kdbench.distiller:Vanilla", "statistic": "last",
    "defaults": {"train": {"epochs": 2, "batch_size": 50, "lr": 0.05, "weight_decay": 5e-4, "milestones": [1],
                           "test_batch_size": 100}},
    "presets": {"smoke": {
        "dataset": "synthetic-cifar100", "data_subset": {"train_per_class": 1, "test_per_class": 1},
        "pairs": {
            "base": {"student": "resnet8", "train": {"keep_checkpoints": ["best", 1]}},
            "assistant": {"student": "resnet8", "teacher_from": "base"},
            "early": {"student": "resnet8", "teacher_from": {"pair": "base", "checkpoint": 1}},
            "warm": {"student": "resnet8", "init_from": {"pair": "assistant"}},
            "ensemble": {"student": "resnet8", "teacher_from": ["base", {"pair": "base", "checkpoint": 1}]},
        }}},
    "claims": [{"claim": "the assistant is no worse than 100 points below its base", "preset": "smoke",
                "better": "assistant", "than": "base", "by": -100}],
}


def chain_paper(spec=SPEC) -> Paper:
    return Paper("chain", get_paper("kd").folder, copy.deepcopy(spec))


def run(paper, pair, **kw):
    (cfg,) = plan(paper, "smoke", [pair], [0], kw.pop("overrides", {}))
    return run_one(paper, cfg, device=pick_device("cpu"), latency_iters=2, log=lambda *_: None, **kw)


def test_a_teacher_from_another_pair_is_its_trained_student_and_is_reused(sandbox, one_thread_module):
    paper = chain_paper()
    rec = run(paper, "assistant")  # trains base first (its own record), then the assistant
    base_cfg = rec_cfg = resolve("chain", paper.spec, "smoke", "base", 0)
    base = json.loads((run_dir_of(base_cfg) / "complete.json").read_text())
    info = rec["teacher_info"]
    assert info["source"] == "run" and info["pair"] == "base" and info["checkpoint"] == "last"
    assert info["config_digest"] == base_cfg.digest() and Path(base["record"]).exists()
    # the teacher IS base's final student: the same test accuracy, measured again on the loaded weights
    assert info["measured_top1"] == pytest.approx(base["last_top1"])
    assert rec["config"]["teacher_from"]["config"]["pair"] == "base"  # the whole upstream recipe is in the record
    # a second downstream run reuses base (same digest): its checkpoint file is not rewritten
    mtime = (run_dir_of(rec_cfg) / "checkpoint-main.pt").stat().st_mtime_ns
    rec2 = run(paper, "early")
    assert (run_dir_of(base_cfg) / "checkpoint-main.pt").stat().st_mtime_ns == mtime
    assert rec2["teacher_info"]["checkpoint"] == "epoch1"
    kept = checkpoint.load(rec2["teacher_info"]["path"])
    assert kept["epoch"] == 1 and kept["top1"] == pytest.approx(rec2["teacher_info"]["measured_top1"])
    # a changed upstream recipe is a different config: base is trained again
    rec3 = run(paper, "assistant", overrides={"train": {"lr": 0.01}})
    assert rec3["teacher_info"]["config_digest"] != base_cfg.digest()
    assert (run_dir_of(base_cfg) / "checkpoint-main.pt").stat().st_mtime_ns != mtime


def test_init_from_starts_the_student_from_the_upstream_weights(sandbox, one_thread_module):
    paper = chain_paper()
    spec = copy.deepcopy(SPEC)
    spec["presets"]["smoke"]["pairs"]["warm"]["train"] = {"lr": 1e-12, "weight_decay": 0.0, "epochs": 1,
                                                           "milestones": []}
    paper = chain_paper(spec)
    rec = run(paper, "warm")  # lr ~ 0: the weights end where they started, at the assistant's
    assert rec["init_info"]["pair"] == "assistant"
    ends = [checkpoint.load(run_dir_of(resolve("chain", spec, "smoke", pair, 0)) / "checkpoint-main.pt")["model"]
            for pair in ("assistant", "warm")]
    weights = [k for k in ends[0] if k.endswith("weight") and "bn" not in k]
    assert weights and all(torch.allclose(ends[0][k], ends[1][k]) for k in weights)
    torch.manual_seed(0)  # and differ from the initial weights a run without init_from starts from
    fresh = {f"student.{k}": v for k, v in create_model("resnet8", num_classes=100).state_dict().items()}
    assert not any(torch.allclose(fresh[k], ends[1][k]) for k in weights)


@pytest.mark.parametrize("pairs, message", [
    ({"a": {"student": "resnet8", "teacher_from": "b"}, "b": {"student": "resnet8", "teacher_from": "a"}}, "cycle"),
    ({"a": {"student": "resnet8", "teacher_from": "nope"}}, "does not have"),
    ({"a": {"student": "resnet8"}, "b": {"student": "resnet8", "teacher_from": {"pair": "a", "checkpoint": "best"}}},
     "keep_checkpoints"),
    ({"a": {"student": "resnet8", "teacher_from": {"pair": "a", "epoch": 3}}}, "unknown key"),
])
def test_bad_chains_are_one_line_errors(pairs, message):
    spec = copy.deepcopy(SPEC)
    spec["presets"]["smoke"]["pairs"] = pairs
    with pytest.raises(UsageError, match=message):
        plan(chain_paper(spec), "smoke", list(pairs)[-1:], [0], {})


def _rec(pair, value, seed=0, paper="chain"):
    cfg = resolve(paper, SPEC, "smoke", pair, seed)
    return {"paper": paper, "preset": "smoke", "pair": pair, "seed": seed, "dataset": cfg.dataset,
            "epochs": cfg.train.epochs, "reported_top1": value}


@pytest.mark.parametrize("better, than, by, status", [
    ([30.0, 32.0], [29.0], 2.0, "ok"),     # mean 31 >= 29 + 2
    ([30.0, 31.0], [29.0], 2.0, "FAIL"),   # mean 30.5 < 31
    ([], [29.0], 0.0, "not run"),
])
def test_claims_compare_means_over_seeds(better, than, by, status):
    spec = copy.deepcopy(SPEC)
    spec["claims"] = [{"claim": "x", "preset": "smoke", "better": "assistant", "than": "base", "by": by}]
    records = [_rec("assistant", v, seed=i) for i, v in enumerate(better)] + [_rec("base", v) for v in than]
    (row,) = evaluate_claims(records, papers=[chain_paper(spec)])
    assert row["status"] == status and row["paper"] == "chain"


def test_claims_ignore_invalid_records_and_reject_malformed_claims():
    bad = {**_rec("assistant", 99.0), "epochs": 1}  # not the preset's epochs: cannot stand for it
    (row,) = evaluate_claims([bad, _rec("base", 1.0)], papers=[chain_paper()])
    assert row["status"] == "not run"
    spec = copy.deepcopy(SPEC)
    spec["claims"] = [{"claim": "x", "preset": "smoke", "better": "nope", "than": "base"}]
    with pytest.raises(UsageError, match="pair"):
        chain_paper(spec).claims
    spec["claims"] = [{"claim": "x", "preset": "smoke", "better": "base"}]
    with pytest.raises(UsageError, match="needs claim, preset, better, than"):
        chain_paper(spec).claims


def test_a_list_of_teacher_from_pairs_is_an_ensemble_of_their_logits(sandbox, one_thread_module):
    paper = chain_paper()
    rec = run(paper, "ensemble")
    cfg = resolve("chain", paper.spec, "smoke", "ensemble", 0)
    assert cfg.teacher == "ensemble:resnet8+resnet8" and len(cfg.teacher_ensemble) == 2
    members = rec["teacher_info"]["ensemble"]
    assert [m["checkpoint"] for m in members] == ["last", "epoch1"]
    # the ensemble's accuracy is that of the mean of the two members' logits, computed here by hand
    from kdbench.data import make_loaders
    from kdbench.evaluate import accuracy
    from kdbench.upstream import LogitEnsemble
    states = [checkpoint.load(m["path"])["model"] for m in members]
    states[0] = {k[len("student."):]: v for k, v in states[0].items() if k.startswith("student.")}
    models = [create_model("resnet8", num_classes=100) for _ in states]
    _, test, _ = make_loaders(cfg.dataset, batch_size=50, device="cpu", subset=cfg.data_subset, test_batch_size=100)
    manual = LogitEnsemble(models, states).eval()
    with torch.no_grad():
        correct = sum(int((torch.stack([m(x) for m in manual.members]).mean(0).argmax(1) == y).sum())
                      for x, y, _ in test)
    assert rec["teacher_info"]["measured_top1"] == pytest.approx(100 * correct / test.num_samples)
    assert accuracy(manual, test)["top1"] == pytest.approx(rec["teacher_info"]["measured_top1"])


def test_a_listed_pair_already_trained_as_an_upstream_run_is_not_trained_again(sandbox, capsys, one_thread_module):
    from kdbench.cli import main
    tiny = ["--set", "data_subset.train_per_class=2", "--set", "data_subset.test_per_class=1",
            "--set", "train.epochs=1", "--latency-iters", "2"]
    assert main(["reproduce", "takd", "--preset", "smoke", "--pair", "resnet20-resnet14,resnet20", *tiny]) == 0
    out = capsys.readouterr().out
    assert out.count("stage resnet20 (seed 0) has no completed run") == 1
    assert out.count("takd/smoke resnet20 seed 0:") == 1  # trained once, as the upstream run
    summary = json.loads(out[out.rindex("[\n"):])
    assert [r["pair"] for r in summary] == ["resnet20-resnet14", "resnet20"]


def test_digest_ignores_options_left_at_their_default_and_sees_every_change():
    """A completed upstream run or cached teacher stays valid when kdbench gains an option whose default
    keeps the old behaviour; any setting that differs from the default changes the digest."""
    import dataclasses
    cfg = resolve("tfkd", get_paper("tfkd").spec, "smoke", "self-shufflenetv2", 0)
    spelled_out = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=False, eval_every=1))
    assert spelled_out.digest() == cfg.digest()
    for changed in (dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, best_tie="first")),
                    dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, warmup_unit="epoch")),
                    dataclasses.replace(cfg, seed=1)):
        assert changed.digest() != cfg.digest()
    upstream = cfg.teacher_from.config  # nested configs count too
    deeper = dataclasses.replace(cfg, teacher_from=dataclasses.replace(
        cfg.teacher_from, config=dataclasses.replace(upstream, train=dataclasses.replace(upstream.train, lr=0.01))))
    assert deeper.digest() != cfg.digest()


@pytest.mark.parametrize("key, value", [("warmup_unit", "iteration"), ("best_tie", "middle")])
def test_schedule_options_are_validated(key, value):
    from kdbench.config import make_train
    with pytest.raises(UsageError, match=f"{key}='{value}'; choose from"):
        make_train("x.train", {"epochs": 1, "batch_size": 8, "lr": 0.1, "weight_decay": 0, key: value})
