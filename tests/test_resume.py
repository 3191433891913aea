"""Kill and resume: a run continues from its last complete epoch as if it had never stopped (weights,
optimizer, every random generator, the teacher-logit cache, a method's buffers), wherever it was killed."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train import MEAN, STD, loaders, tiny_net
from torch import nn

from kdbench import checkpoint, rng
from kdbench.config import TrainConfig
from kdbench.data.loader import DeviceLoader
from kdbench.distiller import Distiller
from kdbench.reproduce import seed_everything
from kdbench.teacher_cache import TeacherLogitCache
from kdbench.train import fit
from reproductions.kd.method import KD

ROOT = Path(__file__).resolve().parents[1]  # the checkout these tests belong to
CFG = TrainConfig(epochs=3, batch_size=32, lr=0.1, weight_decay=5e-4, milestones=[2], gamma=0.5)
TIMING = ("train_img_s", "train_time_s")


class Owner(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Module()
        self.inner.gen = torch.Generator().manual_seed(1)
        self.np_gen, self.legacy, self.py = np.random.default_rng(2), np.random.RandomState(3), random.Random(4)


def draws(owner: Owner) -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(2).tolist(),
            torch.rand(1, generator=owner.inner.gen).item(), owner.np_gen.random(), owner.legacy.randn(),
            owner.py.random())


def test_every_generator_round_trips_through_a_weights_only_checkpoint(tmp_path):
    owner = Owner()
    random.gauss(0, 1), np.random.randn(), owner.legacy.randn()  # leave cached Gaussians in the states
    checkpoint.atomic_save({"rng": rng.capture(owner)}, tmp_path / "c.pt")
    expected = draws(owner)
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    fresh = Owner()
    assert draws(fresh) != expected
    rng.restore(checkpoint.load(tmp_path / "c.pt")["rng"], fresh)  # checkpoint.load: weights_only=True
    assert draws(fresh) == expected
    with pytest.raises(RuntimeError, match="generators"):
        rng.restore(checkpoint.load(tmp_path / "c.pt")["rng"], nn.Module())


class Noisy(Distiller):
    """Draws at every step from Python's, NumPy's and torch's global generators and from its own, and
    has dropout: any generator a resume failed to restore would change the run."""

    def __init__(self, student, teacher=None):
        super().__init__(nn.Sequential(student, nn.Dropout(0.2)), teacher)
        self.gen = torch.Generator().manual_seed(5)

    def forward(self, images, labels, ctx):
        logits = self.student(images)
        shift = random.random() + float(np.random.rand()) + torch.rand(1, generator=self.gen)
        return logits, {"loss_ce": F.cross_entropy(logits + 0.1 * torch.randn_like(logits) * shift, labels)}


class Killed(BaseException):
    """Stands for SIGKILL inside the process: nothing after it runs, nothing catches it."""


def kill_in_step(distiller: Distiller, epoch: int, step: int, stage: str = "main") -> None:
    """Make ``distiller`` stop the process at the start of ``step`` of ``epoch`` (1-based) of ``stage``."""
    seen = {}

    def hook(module, args):
        ctx = args[2]
        key = (ctx.stage, ctx.epoch)
        seen[key] = seen.get(key, 0) + 1
        if (ctx.stage, ctx.epoch, seen[key]) == (stage, epoch, step):
            raise Killed
    distiller.register_forward_pre_hook(hook)


def scramble() -> None:
    """A new process: other states of every global generator."""
    random.seed(123), np.random.seed(123), torch.manual_seed(123)


def train(make, run_dir, resume=False, kill=None, loader_fn=loaders, cfg=CFG):
    """fit a fresh ``make()`` seeded as kdbench.reproduce.run_one seeds a run; ``kill``: (epoch, step) at which
    the process dies. -> (distiller, state or None if killed)"""
    seed_everything(0)
    distiller = make()
    if kill:
        kill_in_step(distiller, *kill)
    try:
        return distiller, fit(distiller, *loader_fn(), cfg, run_dir=run_dir, resume=resume, log=lambda *_: None)
    except Killed:
        return distiller, None


def identical(a, b) -> bool:
    """Equal nested dicts / lists of tensors and numbers, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_run(a: tuple, b: tuple, run_dir_a: Path, run_dir_b: Path) -> None:
    (da, sa), (db, sb) = a, b
    for (k, v1), (k2, v2) in zip(da.state_dict().items(), db.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v1, v2), k
    strip = [{k: v for k, v in h.items() if k not in TIMING} for h in sa["history"]], \
            [{k: v for k, v in h.items() if k not in TIMING} for h in sb["history"]]
    assert strip[0] == strip[1] and sa["best_top1"] == sb["best_top1"]
    ca, cb = checkpoint.load(run_dir_a / "checkpoint-main.pt"), checkpoint.load(run_dir_b / "checkpoint-main.pt")
    assert identical(ca["model"], cb["model"]) and identical(ca["optimizer"], cb["optimizer"])
    logged = [json.loads(line)["epoch"] for line in (run_dir_b / "log-main.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]  # each epoch once, whatever the kill interrupted


@pytest.mark.parametrize("kill", [(1, 2), (2, 2), (3, 3)], ids=["before-first-checkpoint", "mid-epoch-2", "last-epoch"])
def test_killed_mid_epoch_resumes_bit_for_bit(tmp_path, kill, one_thread_module):
    reference = train(lambda: Noisy(tiny_net()), tmp_path / "ref")
    _, state = train(lambda: Noisy(tiny_net()), tmp_path / "run", kill=kill)
    assert state is None
    scramble()
    resumed = train(lambda: Noisy(tiny_net()), tmp_path / "run", resume=True)
    assert_same_run(reference, resumed, tmp_path / "ref", tmp_path / "run")


def test_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(tmp_path, monkeypatch, one_thread_module):
    reference = train(lambda: Noisy(tiny_net()), tmp_path / "ref")
    real = checkpoint.atomic_save

    def dies_writing_epoch_2(obj, path):
        if Path(path).name == "checkpoint-main.pt" and obj["trainer"]["epoch"] == 2:
            Path(path).with_name(".checkpoint-main.pt.x1y2.tmp").write_bytes(b"PK\x03\x04 half a zip")
            raise Killed  # the epoch's log line is written, its checkpoint is not
        real(obj, path)
    monkeypatch.setattr(checkpoint, "atomic_save", dies_writing_epoch_2)
    assert train(lambda: Noisy(tiny_net()), tmp_path / "run")[1] is None
    monkeypatch.setattr(checkpoint, "atomic_save", real)
    assert checkpoint.load(tmp_path / "run" / "checkpoint-main.pt")["trainer"]["epoch"] == 1
    assert len((tmp_path / "run" / "log-main.jsonl").read_text().splitlines()) == 2
    scramble()
    resumed = train(lambda: Noisy(tiny_net()), tmp_path / "run", resume=True)
    assert_same_run(reference, resumed, tmp_path / "ref", tmp_path / "run")
    assert not list((tmp_path / "run").glob(".*.tmp"))  # what the kill left is cleaned up


def test_the_check_would_catch_a_resume_without_the_generators(tmp_path, one_thread_module):
    """The comparison above is sharp: resuming the same checkpoint without its generator states differs."""
    reference = train(lambda: Noisy(tiny_net()), tmp_path / "ref")
    train(lambda: Noisy(tiny_net()), tmp_path / "run", kill=(2, 2))
    saved = checkpoint.load(tmp_path / "run" / "checkpoint-main.pt")
    del saved["rng"]
    checkpoint.atomic_save(saved, tmp_path / "run" / "checkpoint-main.pt")
    scramble()
    resumed, _ = train(lambda: Noisy(tiny_net()), tmp_path / "run", resume=True)
    assert not all(torch.equal(a, b) for a, b in zip(reference[0].state_dict().values(), resumed.state_dict().values()))


def staged(run_dir, resume=False, kill=None):
    """An ``init`` stage of 2 epochs, then the main one (as run_one runs a recipe's ``stages``)."""
    seed_everything(0)
    distiller = Noisy(tiny_net())
    if kill:
        kill_in_step(distiller, *kill)
    try:
        fit(distiller, *loaders(), TrainConfig(**{**CFG.__dict__, "epochs": 2}), run_dir=run_dir, stage="init",
            resume=resume, log=lambda *_: None)
        return distiller, fit(distiller, *loaders(), CFG, run_dir=run_dir, resume=resume, log=lambda *_: None)
    except Killed:
        return distiller, None


@pytest.mark.parametrize("kill", [(2, 1, "init"), (1, 2, "main")], ids=["in-the-init-stage", "before-main-checkpoint"])
def test_a_multi_stage_run_resumes_in_either_stage(tmp_path, kill, one_thread_module):
    """Killed in main's first epoch, the generators come from the end of the init stage's checkpoint."""
    reference = staged(tmp_path / "ref")
    assert staged(tmp_path / "run", kill=kill)[1] is None
    scramble()
    assert_same_run(reference, staged(tmp_path / "run", resume=True), tmp_path / "ref", tmp_path / "run")


def test_a_run_killed_in_its_upstream_run_resumes_the_chain(sandbox, monkeypatch, one_thread_module):
    """``teacher_from``: the upstream run (base) is killed writing its second checkpoint; --resume continues
    it from its first, then trains the downstream run (assistant) as an uninterrupted chain would."""
    from test_upstream import chain_paper, run

    from kdbench.reproduce import run_dir_of
    real = checkpoint.atomic_save

    def killed_in_base(obj, path):
        if "/base/" in str(path) and Path(path).name == "checkpoint-main.pt" and obj["trainer"]["epoch"] == 2:
            raise Killed
        real(obj, path)
    monkeypatch.setattr(checkpoint, "atomic_save", killed_in_base)
    with pytest.raises(Killed):
        run(chain_paper(), "assistant")
    monkeypatch.setattr(checkpoint, "atomic_save", real)
    scramble()
    resumed = run(chain_paper(), "assistant", resume=True)
    (cfg,) = plan_of("assistant")
    got = checkpoint.load(run_dir_of(cfg) / "checkpoint-main.pt")["model"]
    for var, sub in (("KDBENCH_RUNS", "runs2"), ("KDBENCH_RESULTS", "results2")):
        monkeypatch.setenv(var, str(sandbox / sub))
    whole = run(chain_paper(), "assistant")
    want = checkpoint.load(run_dir_of(cfg) / "checkpoint-main.pt")["model"]
    assert (resumed["best_top1"], resumed["last_top1"]) == (whole["best_top1"], whole["last_top1"])
    assert resumed["teacher_info"]["measured_top1"] == whole["teacher_info"]["measured_top1"]
    assert identical(got, want)


def plan_of(pair):
    from test_upstream import chain_paper

    from kdbench.reproduce import plan
    return plan(chain_paper(), "smoke", [pair], [0], {})


def cache_loaders():
    """100 samples in batches of 32 (a short last batch), 18 views each: sub-batches of cache misses."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (100,), generator=g)
    kw = {"batch_size": 32, "device": torch.device("cpu"), "mean": MEAN, "std": STD}
    return DeviceLoader(x, y, train=True, seed=0, padding=1, **kw), DeviceLoader(x[:32], y[:32], train=False, **kw)


def with_cache():
    d = KD(tiny_net(), tiny_net())
    d.logit_cache = TeacherLogitCache(100, 18, 10, "cpu")
    return d


def test_the_teacher_logit_cache_is_resumed_with_the_run(tmp_path, one_thread_module):
    """A resumed run reads back the logits it had cached instead of recomputing them in other batches
    (which equals them only up to reduction order), and keeps counting hits and misses from there."""
    reference = train(with_cache, tmp_path / "ref", loader_fn=cache_loaders)
    train(with_cache, tmp_path / "run", kill=(3, 2), loader_fn=cache_loaders)
    assert sorted(p.name for p in (tmp_path / "run").glob("teacher-cache-*")) == [
        "teacher-cache-main-r0-e1.pt", "teacher-cache-main-r0-e2.pt"]
    scramble()
    resumed = train(with_cache, tmp_path / "run", resume=True, loader_fn=cache_loaders)
    assert_same_run(reference, resumed, tmp_path / "ref", tmp_path / "run")
    assert resumed[0].logit_cache.summary() == reference[0].logit_cache.summary()
    assert torch.equal(resumed[0].logit_cache.filled, reference[0].logit_cache.filled)
    filled = reference[0].logit_cache.filled
    assert torch.equal(resumed[0].logit_cache.logits[filled], reference[0].logit_cache.logits[filled])
    # without the saved entries the resumed run would refill the cache: other misses (and other logits)
    train(with_cache, tmp_path / "bare", kill=(3, 2), loader_fn=cache_loaders)
    for path in (tmp_path / "bare").glob("teacher-cache-*"):
        path.unlink()
    bare, _ = train(with_cache, tmp_path / "bare", resume=True, loader_fn=cache_loaders)
    assert bare.logit_cache.misses > reference[0].logit_cache.misses


def test_crd_memory_bank_and_negative_sampling_resume_exactly(tmp_path, one_thread_module):
    """CRD keeps per-sample memory banks (buffers) and draws its negatives with torch.rand at every step."""
    from kdbench.distiller import DataInfo
    from kdbench.models import create_model
    from reproductions.crd.method import CRD

    def make():
        labels = loaders()[0].labels
        data = DataInfo(num_samples=96, num_classes=10, image_size=32, train_labels=labels)
        return CRD(create_model("resnet8", num_classes=10), create_model("resnet8", num_classes=10), data, nce_k=16)
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 2})
    reference = train(make, tmp_path / "ref", cfg=cfg)
    train(make, tmp_path / "run", kill=(2, 2), cfg=cfg)
    saved = checkpoint.load(tmp_path / "run" / "checkpoint-main.pt")
    assert {"memory.memory_v1", "memory.memory_v2", "memory.z"} <= set(saved["model"])
    scramble()
    resumed = train(make, tmp_path / "run", resume=True, cfg=cfg)
    for (k, a), b in zip(reference[0].state_dict().items(), resumed[0].state_dict().values()):
        assert torch.equal(a, b), k
    assert reference[1]["history"][-1]["loss_crd"] == resumed[1]["history"][-1]["loss_crd"]


def test_a_checkpoint_of_another_config_is_not_resumed(tmp_path, one_thread_module):
    logs = []
    torch.manual_seed(0)
    fit(Noisy(tiny_net()), *loaders(), CFG, run_dir=tmp_path, log=lambda *_: None, identity="aaaa")
    state = fit(Noisy(tiny_net()), *loaders(), CFG, run_dir=tmp_path, resume=True, log=logs.append, identity="bbbb")
    assert "of another config (digest aaaa, this run bbbb): starting afresh" in logs[0]
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]
    assert checkpoint.load(tmp_path / "checkpoint-main.pt")["identity"] == "bbbb"


# --- the CLI killed with SIGKILL ------------------------------------------------------------------------------

PAPER = ["noisy_teachers", "--preset", "smoke", "--set", "train.epochs=3", "--set", "data_subset.train_per_class=20",
         "--set", "data_subset.test_per_class=10", "--latency-iters", "2"]
# ``python -m kdbench`` whose os.fsync, once an atomic write of the file $PAUSE_FILE has reached it (the data
# written to the temporary file, not yet renamed into place), touches $PAUSE_FLAG and waits to be killed
CHILD = """
import os, runpy, sys, time
pause, flag, fsync = os.environ.get("PAUSE_FILE"), os.environ.get("PAUSE_FLAG"), os.fsync
def paused_fsync(fd):
    name = os.readlink(f"/proc/self/fd/{fd}")
    if pause and (os.path.dirname(name) == os.path.dirname(pause)
                  and os.path.basename(name).startswith("." + os.path.basename(pause) + ".")):
        open(flag, "w").close()
        time.sleep(600)
    fsync(fd)
os.fsync = paused_fsync
sys.argv = ["kdbench", *sys.argv[1:]]
runpy.run_module("kdbench", run_name="__main__")
"""


def kdbench(root: Path, *args, **env) -> subprocess.Popen:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "KDBENCH_DATA": str(root / "data"),
            "KDBENCH_RUNS": str(root / "runs"), "KDBENCH_RESULTS": str(root / "results"), **env}
    return subprocess.Popen([sys.executable, "-c", CHILD, "reproduce", *PAPER, *args], cwd=ROOT, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n{proc.stdout.read()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.002)


def kill(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, out
    return out


@pytest.mark.slow  # about 20 s: six processes, each importing torch
def test_cli_run_killed_again_and_again_resumes_to_the_uninterrupted_result(tmp_path):
    pick = random.Random(0)  # the kill delays: random, but the same at every run of the test
    ref_root, root = tmp_path / "reference", tmp_path / "killed"
    reference = kdbench(ref_root)  # runs alongside the killed one
    run = root / "runs/noisy_teachers/smoke/mlp_1200_1200-mlp_800_800/seed0"
    record = root / "results/noisy_teachers/smoke/mlp_1200_1200-mlp_800_800/seed0.json"
    teachers = root / "data/teachers/trained"
    flag = tmp_path / "paused"

    # 1. during the teacher's training, a random moment after its first epoch's checkpoint
    proc = kdbench(root)
    wait_for(proc, lambda: any(teachers.glob("*/checkpoint-main.pt")), "teacher checkpoint")
    time.sleep(pick.uniform(0.0, 0.05))
    kill(proc)
    assert not any(teachers.glob("*/ckpt.pth")) and not run.exists()
    # 2. writing the student's first checkpoint: the run has no checkpoint yet
    proc = kdbench(root, "--resume", PAUSE_FILE=str(run / "checkpoint-main.pt"), PAUSE_FLAG=str(flag))
    wait_for(proc, lambda: flag.exists() and any(run.glob(".checkpoint-main.pt.*.tmp")), "checkpoint write")
    out = kill(proc)
    assert "resumed main from epoch" in out  # the teacher's training continued from its checkpoint
    assert not (run / "checkpoint-main.pt").exists() and any(run.glob(".checkpoint-main.pt.*.tmp"))
    flag.unlink()
    # 3. a random moment after the student's first complete epoch
    proc = kdbench(root, "--resume")
    wait_for(proc, lambda: (run / "checkpoint-main.pt").exists(), "student checkpoint")
    time.sleep(pick.uniform(0.0, 0.05))
    out = kill(proc)
    assert not list(run.glob(".*.tmp"))  # step 2's leftover is gone
    # 4. after the last epoch, writing the results record
    proc = kdbench(root, "--resume", PAUSE_FILE=str(record), PAUSE_FLAG=str(flag))
    wait_for(proc, flag.exists, "results record write")
    kill(proc)
    assert not record.exists() and checkpoint.load(run / "checkpoint-main.pt")["trainer"]["epoch"] == 3
    # 5. the record is written without training again
    proc = kdbench(root, "--resume")
    out = proc.communicate()[0]
    assert proc.returncode == 0, out
    assert "resumed main from epoch 3" in out and "epoch 1/3" not in out and "epoch 3/3" not in out

    ref_out = reference.communicate()[0]
    assert reference.returncode == 0, ref_out
    ref_run = ref_root / "runs" / run.relative_to(root / "runs")
    got, want = json.loads(record.read_text()), json.loads((ref_root / "results" / record.relative_to(root / "results")).read_text())
    for key in ("best_top1", "best_epoch", "last_top1", "last_top5", "skipped_steps", "teacher_cache"):
        assert got[key] == want[key], key
    assert got["teacher_info"]["sha256"] == want["teacher_info"]["sha256"]  # the resumed teacher: same bytes
    a, b = checkpoint.load(run / "checkpoint-main.pt"), checkpoint.load(ref_run / "checkpoint-main.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING} for r in h]
    assert strip(a["trainer"]["history"]) == strip(b["trainer"]["history"])
    assert not list(run.glob("teacher-cache-*"))  # recorded: the cache's entries are not kept

    # 6. resuming the finished run trains nothing and writes the same record
    proc = kdbench(root, "--resume")
    out = proc.communicate()[0]
    assert proc.returncode == 0 and "epoch 1/3" not in out, out
    again = json.loads(record.read_text())
    for key in ("best_top1", "best_epoch", "last_top1", "last_top5", "skipped_steps", "teacher_cache", "teacher_info",
                "params", "macs", "config"):
        assert again[key] == got[key], key
