"""The teacher-logit cache: view ids, exact lookups, lazy fill, when it switches itself off, and a run
with the cache giving the run without it."""
import json

import pytest
import torch
from torch import nn

from kdbench import teacher_cache
from kdbench.cli import main
from kdbench.config import TrainConfig
from kdbench.data.loader import DeviceLoader
from kdbench.distiller import Distiller, StepContext
from kdbench.teacher_cache import TeacherLogitCache
from kdbench.train import fit
from reproductions.kd.method import KD

from test_train import MEAN, STD, tiny_net


def data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_view_ids_are_unique_and_name_the_crop_and_flip():
    x, y = data()
    loader = DeviceLoader(x, y, batch_size=40, device="cpu", mean=MEAN, std=STD, train=True, seed=1)
    assert loader.num_views == 162
    k = torch.arange(9)
    all_ids = loader.view_ids(torch.cartesian_prod(k, k).repeat(2, 1), torch.arange(2).repeat_interleave(81))
    assert sorted(all_ids.tolist()) == list(range(162))
    loader.set_epoch(3)
    plan = loader.epoch_plan()
    _, _, idx, views = next(loader.batches())
    flip, rest = views // 81, views % 81
    assert torch.equal(flip.bool(), plan["flips"][idx])
    assert torch.equal(torch.stack([rest // 9, rest % 9], 1), plan["offsets"][idx])
    test = DeviceLoader(x, y, batch_size=40, device="cpu", mean=MEAN, std=STD, train=False)
    assert next(test.batches())[3] is None


class Counting(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x):
        self.seen.append(len(x))
        return self.net(x)


def test_lookup_equals_the_live_teacher_and_fills_only_misses():
    torch.manual_seed(0)
    teacher = Counting(tiny_net().eval())
    x, y = data()
    loader = DeviceLoader(x, y, batch_size=20, device="cpu", mean=MEAN, std=STD, train=True, seed=0)
    cache = TeacherLogitCache(40, loader.num_views, 10, "cpu")
    seen_views = set()
    for epoch in (1, 2, 3):
        loader.set_epoch(epoch)
        for images, _, idx, views in loader.batches():
            new = sum((i, v) not in seen_views for i, v in zip(idx.tolist(), views.tolist()))
            teacher.seen.clear()
            got = cache.lookup(teacher, images, idx, views)
            torch.testing.assert_close(got, teacher.net(images), rtol=1e-5, atol=1e-5)
            assert sum(teacher.seen) == new  # the teacher ran on the missing samples only
            seen_views |= set(zip(idx.tolist(), views.tolist()))
    assert cache.misses == len(seen_views) and cache.hits == 120 - len(seen_views)
    assert cache.summary()["nbytes"] == 40 * 162 * (10 * 4 + 1)
    loader.set_epoch(1)  # epoch 1 again: every view is known, no teacher call
    images, _, idx, views = next(loader.batches())
    teacher.seen.clear()
    cache.lookup(teacher, images, idx, views)
    assert teacher.seen == []


def test_distiller_uses_the_cache_only_for_training_steps_with_views():
    torch.manual_seed(0)
    d = KD(tiny_net(), Counting(tiny_net()))
    d.logit_cache = TeacherLogitCache(40, 162, 10, "cpu")
    x, y = data()
    loader = DeviceLoader(x, y, batch_size=20, device="cpu", mean=MEAN, std=STD, train=True, seed=0)
    loader.set_epoch(1)
    images, labels, idx, views = next(loader.batches())
    d.train()
    d(images, labels, StepContext(epoch=1, epochs=1, indices=idx, views=views))
    d(images, labels, StepContext(epoch=1, epochs=1, indices=idx, views=views))
    assert d.logit_cache.hits == 20 and d.logit_cache.misses == 20
    d(images, labels, StepContext(epoch=1, epochs=1, indices=idx))  # no views: live teacher
    assert d.logit_cache.hits == 20 and d.teacher.seen == [20, 20]


def test_fit_with_the_cache_equals_fit_without(tmp_path):
    x, y = data(64)
    logs = []
    for use in (False, True):
        torch.manual_seed(0)
        d = KD(tiny_net(), tiny_net().eval())
        if use:
            d.logit_cache = TeacherLogitCache(64, 162, 10, "cpu")
        kw = dict(batch_size=16, device="cpu", mean=MEAN, std=STD)
        train, test = DeviceLoader(x, y, train=True, seed=0, **kw), DeviceLoader(x[:32], y[:32], train=False, **kw)
        cfg = TrainConfig(epochs=3, batch_size=16, lr=0.1, weight_decay=5e-4, milestones=[2])
        state = fit(d, train, test, cfg, run_dir=tmp_path / str(use), progress=False, log=lambda m: None)
        logs.append(state["history"])
    for a, b in zip(*logs):
        assert a["loss_kd"] == pytest.approx(b["loss_kd"], rel=1e-4) and a["test_top1"] == b["test_top1"]


class BatchStats(Distiller):
    teacher_bn = "batch"

    def forward(self, images, labels, ctx):
        return self.student(images), {"loss": self.student(images).sum() * 0}


def test_auto_switches_off_with_a_reason_and_on_refuses(sandbox, capsys, monkeypatch):
    from kdbench.reproduce import setup_teacher_cache
    from kdbench.config import resolve
    from kdbench.registry import get_paper
    cfg = resolve("kd", get_paper("kd").spec, "smoke", "resnet20-resnet8", 0)
    x, y = data()
    loader = DeviceLoader(x, y, batch_size=20, device="cpu", mean=MEAN, std=STD, train=True)
    on = setup_teacher_cache(KD(tiny_net(), tiny_net()), cfg, loader, 10, torch.device("cpu"), amp=False)
    assert on["enabled"] and on["table_bytes"] == 40 * 162 * 41
    off = setup_teacher_cache(BatchStats(tiny_net(), tiny_net()), cfg, loader, 10, torch.device("cpu"), amp=False)
    assert not off["enabled"] and "batch statistics" in off["reason"]
    monkeypatch.setattr(teacher_cache, "free_bytes", lambda device: 1000)
    small = setup_teacher_cache(KD(tiny_net(), tiny_net()), cfg, loader, 10, torch.device("cpu"), amp=False)
    assert not small["enabled"] and "free memory" in small["reason"]
    cfg.train.teacher_cache = "on"
    from kdbench.errors import UsageError
    with pytest.raises(UsageError, match="teacher_cache=on"):
        setup_teacher_cache(KD(tiny_net(), tiny_net()), cfg, loader, 10, torch.device("cpu"), amp=False)


def test_a_kd_run_records_its_cache(sandbox, capsys):
    tiny = ["--set", "train.epochs=2", "--set", "teacher_train.epochs=1", "--set", "data_subset.train_per_class=2",
            "--set", "data_subset.test_per_class=2", "--latency-iters", "2"]
    assert main(["reproduce", "kd", "--preset", "smoke", *tiny]) == 0
    record = json.loads(next((sandbox / "results").rglob("seed0.json")).read_text())
    assert record["teacher_cache"]["enabled"] and record["teacher_cache"]["misses"] >= 200
    assert record["teacher_cache"]["hits"] + record["teacher_cache"]["misses"] == 400
