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


def _record(schema=None, text=None):
    """Setup: a results record in the sandbox (of another ``schema``, or raw ``text``)."""
    def setup(sandbox, monkeypatch):
        from conftest import make_record, write_record
        path = write_record(sandbox / "results", {**make_record(), **({"schema": schema} if schema else {})})
        if text is not None:
            path.write_text(text)
    return setup


def _no_data(kind):
    """Setup: KDBENCH_DATA is a folder that does not exist, or a file (no folder can be made in it), and
    the network is down."""
    def setup(sandbox, monkeypatch):
        from kdbench.data import cifar, mnist
        data = sandbox / "nowhere"
        if kind == "file":
            data.write_text("not a folder\n")
        monkeypatch.setenv("KDBENCH_DATA", str(data))
        def offline(*args, **kwargs):
            raise OSError("network is unreachable")
        monkeypatch.setattr(cifar, "download_url", offline)
        monkeypatch.setattr(mnist, "download", offline)
    return setup


def _paper_yaml(text):
    """Setup: the registry reads a reproductions folder holding one paper.yaml with ``text``."""
    def setup(sandbox, monkeypatch):
        import functools

        from kdbench import registry
        folder = sandbox / "reproductions" / "broken"
        folder.mkdir(parents=True)
        (folder / "paper.yaml").write_text(text)
        monkeypatch.setattr(registry, "reproductions_dir", lambda: sandbox / "reproductions")
        monkeypatch.setattr(registry, "papers", functools.lru_cache(maxsize=None)(registry.papers.__wrapped__))
    return setup


BROKEN_YAML = "reproductions/broken/paper.yaml"
PAPER = "paper: broken\ntitle: t\nmethod: kdbench.distiller:Vanilla\n"


@pytest.mark.parametrize("argv, needle, code, setup", [
    (["reproduce", "nosuchpaper"], "unknown paper 'nosuchpaper'; choose from: ", 2, None),
    (["reproduce", "dkd", "--pair", "resnet1-resnet2"], "unknown pair for dkd/paper 'resnet1-resnet2'; choose from: ", 2, None),
    (["reproduce", "dkd", "--preset", "huge"], "unknown preset for dkd 'huge'; choose from: ", 2, None),
    (["reproduce", "dkd", "--set", "train.lrr=0.1"], "unknown key(s) ['lrr']", 2, None),
    (["reproduce", "dkd", "--set", "method.gamma=2"], "unknown method option(s) ['gamma']", 2, None),
    (["reproduce", "dkd", "--set", "train.amp=fp8"], "amp='fp8'", 2, None),
    (["reproduce", "dkd", "--set", "oops"], "malformed override", 2, None),
    (["reproduce", "dkd", "--set", "dataset=nosuch"], "unknown dataset 'nosuch'; choose from: breast-cancer, cifar10", 2, None),
    (["reproduce", "dkd", "--set", "train.epochs=abc"], "train.epochs='abc'; it must be an integer", 2, None),
    (["reproduce", "dkd", "--set", "train.lr=[1]"], "train.lr=[1]; it must be a finite number", 2, None),
    (["reproduce", "dkd", "--set", "train.milestones=5"], "train.milestones=5; it must be a list of integers", 2, None),
    (["reproduce", "dkd", "--set", "train.keep_checkpoints=best"], "keep_checkpoints='best'; it must be a list", 2, None),
    (["reproduce", "dkd", "--set", "train.eval_every=0"], "eval_every must be a positive integer", 2, None),
    (["reproduce", "dkd", "--set", "train=5"], "malformed override train=5: train takes keys", 2, None),
    (["reproduce", "dkd", "--set", "train.lr=1", "--set", "train.lr.x=2"], "another --set gives lr a value", 2, None),
    (["reproduce", "dkd", "--set", "train.lr=[1"], "malformed override 'train.lr=[1'", 2, None),
    (["reproduce", "dkd", "--set", "method.beta=abc"], "method option beta='abc' of DKD; it must be a number", 2, None),
    (["reproduce", "dkd", "--set", "data_subset.x=1"], "unknown key(s) ['x'] in dkd data_subset", 2, None),
    (["reproduce", "dkd", "--set", "data_subset.train_per_class=0"], "data_subset.train_per_class=0; it must be a positive", 2, None),
    (["reproduce", "dkd", "--seeds", "0"], "--seeds must be at least 1", 2, None),
    (["reproduce", "dkd", "--seed", "a"], "--seed takes seeds separated by commas", 2, None),
    (["reproduce", "dkd", "--seed", "-1"], "--seed takes seeds of 0 or more", 2, None),
    (["reproduce", "dkd", "--parallel", "0"], "--parallel must be at least 1", 2, None),
    (["reproduce", "dkd", "--latency-iters", "0"], "--latency-iters must be at least 1", 2, None),
    (["teachers", "nosuchmodel"], "unknown model 'nosuchmodel'; valid choices: resnet8", 2, None),
    (["profile", "nosuchmodel"], "unknown model 'nosuchmodel'; valid choices: resnet8", 2, None),
    (["bench", "--pair", "nosuch-resnet8"], "unknown model 'nosuch'; valid choices: resnet8", 2, None),
    (["bench", "--dataset", "nosuch"], "unknown dataset 'nosuch'; choose from: ", 2, None),
    (["sweep", "nosuch"], "unknown paper 'nosuch'; choose from: ", 2, None),
    (["check", "--paper", "nosuch"], "unknown paper 'nosuch'; choose from: ", 2, None),
    (["check"], "has schema 99; this kdbench reads schema 1", 2, _record(schema=99)),
    (["leaderboard", "--out", "{sandbox}/leaderboard"], "has schema 99; this kdbench reads schema 1", 2, _record(schema=99)),
    (["check"], "is unreadable (Unterminated string", 2, _record(text='{"schema": 1, "paper": "dk')),
    (["leaderboard", "--out", "{sandbox}/leaderboard"], "is unreadable (Expecting value", 2, _record(text="")),
    (["list"], f"malformed config {{sandbox}}/{BROKEN_YAML}: while parsing", 2, _paper_yaml("paper: [broken\n")),
    (["list"], "needs at least 'paper', 'title', 'method', 'presets'", 2, _paper_yaml("paper: broken\npresets: {}\n")),
    (["reproduce", "broken"], "'presets' must map preset names to presets", 2, _paper_yaml(PAPER + "presets: 5\n")),
    (["list"], "preset 'smoke' needs a 'dataset' and 'pairs'", 2,
     _paper_yaml(PAPER + "presets: {smoke: {pairs: {resnet8: {}}}}\n")),
    (["list"], "unknown key(s) ['pairs']", 2, _paper_yaml(PAPER + "presets: {}\npairs: {}\n")),
    (["reproduce", "dkd"], "dataset cifar100 is missing from {sandbox}/nowhere/cifar100 and could not be downloaded",
     1, _no_data("folder")),
    (["reproduce", "dkd"], "dataset cifar100 is missing from {sandbox}/nowhere/cifar100", 1, _no_data("file")),
    (["reproduce", "hinton", "--preset", "paper"], "dataset mnist is missing from {sandbox}/nowhere/mnist", 1,
     _no_data("folder")),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, sandbox, monkeypatch, argv, needle, code, setup):
    """Bad input: one line naming the problem (and the valid choices), exit 2 (1 for data that is missing
    and cannot be downloaded), and nothing written: no runs, results, leaderboard or data folders."""
    if setup:
        setup(sandbox, monkeypatch)
    before = sorted(sandbox.rglob("*"))
    code_, out, err = run(capsys, *[a.format(sandbox=sandbox) for a in argv])
    assert code_ == code
    assert needle.format(sandbox=sandbox) in err and err.startswith("kdbench: error: ") and err.count("\n") == 1
    assert out == ""
    assert sorted(sandbox.rglob("*")) == before
    assert not (sandbox / "runs").exists() and not (sandbox / "leaderboard").exists()


def test_unknown_paper_names_the_valid_choices(capsys):
    _, _, err = run(capsys, "reproduce", "nosuchpaper")
    assert "dkd" in err and "kd" in err and "vanilla" in err
