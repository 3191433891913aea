"""The CLI: listing, resolved configs, and one-line exit-2 answers to bad input."""
import json

import pytest

from kdbench.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_json(capsys):
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0
    rows = {r["paper"]: r for r in json.loads(out)}
    assert {"kd", "dkd", "vanilla"} <= set(rows)
    dkd = rows["dkd"]
    assert dkd["arxiv"] == "2203.08679" and dkd["title"] == "Decoupled Knowledge Distillation"
    assert {"paper", "smoke", "imagenet"} <= set(dkd["presets"])
    assert "resnet32x4-resnet8x4" in dkd["pairs"] and len([p for p in dkd["pairs"] if p[0].islower()]) >= 11


def test_dry_run_resolves_per_pair_recipe(capsys, sandbox):
    code, out, _ = run(capsys, "reproduce", "dkd", "--pair", "all", "--dry-run")
    assert code == 0
    cfgs = {c["pair"]: c for c in json.loads(out)}
    assert len(cfgs) == 11
    assert cfgs["resnet56-resnet20"]["method"]["beta"] == 2.0
    assert cfgs["resnet32x4-resnet8x4"]["method"]["beta"] == 8.0
    assert cfgs["vgg13-vgg8"]["method"]["beta"] == 6.0
    assert cfgs["vgg13-mobilenetv2"]["train"]["lr"] == 0.01 and cfgs["vgg13-mobilenetv2"]["method"]["beta"] == 6.0
    for c in cfgs.values():  # the pitfall of a per-pair file silently falling back to wd 1e-4
        assert c["train"]["weight_decay"] == 0.0005 and c["train"]["epochs"] == 240
        assert c["train"]["batch_size"] == 64 and c["train"]["milestones"] == [150, 180, 210]
        assert c["method"]["temperature"] == 4.0 and c["method"]["warmup"] == 20
        assert c["teacher_source"] == "published" and c["dataset"] == "cifar100"
    code, out, _ = run(capsys, "reproduce", "dkd", "--preset", "imagenet", "--pair", "all", "--dry-run")
    im = {c["pair"]: c for c in json.loads(out)}
    assert im["ResNet34-ResNet18"]["method"]["beta"] == 0.5 and im["ResNet34-ResNet18"]["method"]["temperature"] == 1.0


def test_seeds_expand(capsys, sandbox):
    code, out, _ = run(capsys, "reproduce", "dkd", "--pair", "resnet32x4-resnet8x4", "--seeds", "5", "--dry-run")
    assert [c["seed"] for c in json.loads(out)] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("argv, needle", [
    (["reproduce", "nosuchpaper"], "unknown paper 'nosuchpaper'; choose from: "),
    (["reproduce", "dkd", "--pair", "resnet1-resnet2"], "unknown pair for dkd/paper 'resnet1-resnet2'; choose from: "),
    (["reproduce", "dkd", "--preset", "huge"], "unknown preset for dkd 'huge'; choose from: "),
    (["reproduce", "dkd", "--set", "train.lrr=0.1"], "unknown key(s) ['lrr']"),
    (["reproduce", "dkd", "--set", "method.gamma=2"], "unknown method option(s) ['gamma']"),
    (["reproduce", "dkd", "--set", "train.amp=fp8"], "amp='fp8'"),
    (["reproduce", "dkd", "--set", "oops"], "malformed override"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, sandbox, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert needle in err and err.count("\n") == 1 and out == ""
    assert not any(sandbox.rglob("*.json")) and not (sandbox / "runs").exists()


def test_unknown_paper_names_the_valid_choices(capsys):
    _, _, err = run(capsys, "reproduce", "nosuchpaper")
    assert "dkd" in err and "kd" in err and "vanilla" in err
