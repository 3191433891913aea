"""Mechanisms for papers whose official code departs from the CRD recipe: their own CIFAR transform
(normalisation, reflect padding), an optimizer rebuilt at each lr decay, a teacher left in train mode,
and a teacher checkpoint the paper published itself."""
import pytest
import torch
import torch.nn.functional as F

from kdbench import teachers
from kdbench.config import TrainConfig, resolve
from kdbench.data import make_loaders
from kdbench.data.loader import DeviceLoader
from kdbench.distiller import Distiller, Vanilla
from kdbench.errors import Unavailable, UsageError
from kdbench.models import create_model
from kdbench.train import fit

from test_train import loaders, tiny_net


def test_reflect_padding_crops_come_from_the_reflected_image():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(6)
    loader = DeviceLoader(x, y, batch_size=6, device="cpu", mean=(0, 0, 0), std=(1 / 255,) * 3, train=True,
                          seed=3, padding_mode="reflect")
    loader.set_epoch(1)
    plan = loader.epoch_plan()
    images, labels, idx = next(iter(loader))
    reflected = F.pad(x.float(), (4, 4, 4, 4), mode="reflect")
    for image, i in zip(images, idx.tolist()):
        top, left = plan["offsets"][i].tolist()
        crop = reflected[i, :, top:top + 32, left:left + 32]
        if plan["flips"][i]:
            crop = crop.flip(-1)
        torch.testing.assert_close(image, crop)
    zeros = DeviceLoader(x, y, batch_size=6, device="cpu", mean=(0, 0, 0), std=(1 / 255,) * 3, train=True,
                         seed=3)
    zeros.set_epoch(1)
    assert not torch.equal(next(iter(zeros))[0], images)  # some crop reaches the border
    with pytest.raises(ValueError, match="padding_mode"):
        DeviceLoader(x, y, batch_size=6, device="cpu", mean=(0, 0, 0), std=(1, 1, 1), train=True,
                     padding_mode="edge")


def test_augment_replaces_the_normalisation(sandbox):
    subset = {"train_per_class": 2, "test_per_class": 1}
    plain_train, plain_test, _ = make_loaders("synthetic-cifar10", batch_size=8, device="cpu", subset=subset)
    mean, std = (125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)
    own_train, own_test, _ = make_loaders("synthetic-cifar10", batch_size=8, device="cpu", subset=subset,
                                          augment={"mean": mean, "std": std, "padding_mode": "reflect"})
    raw = own_test.images.float() / 255
    expected = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(next(iter(own_test))[0], expected[:8])
    assert not torch.allclose(next(iter(plain_test))[0], expected[:8])
    assert own_train.padding_mode == "reflect" and plain_train.padding_mode == "zeros"
    with pytest.raises(ValueError, match="unknown augment"):
        make_loaders("synthetic-cifar10", batch_size=8, device="cpu", subset=subset, augment={"cutout": 16})


def test_momentum_reset_clears_the_buffers_when_the_lr_decays(tmp_path, monkeypatch):
    """Momentum-buffer count seen by the first step of each epoch."""
    real_sgd, seen = torch.optim.SGD, {}

    class Probe(Vanilla):
        def forward(self, images, labels, ctx):
            seen.setdefault(ctx.epoch, sum(len(s) for s in self.optimizer.state.values()))
            return super().forward(images, labels, ctx)

    def run(reset: bool) -> dict:
        seen.clear()
        torch.manual_seed(0)
        probe = Probe(tiny_net())

        def spy(*args, **kwargs):
            probe.optimizer = real_sgd(*args, **kwargs)
            return probe.optimizer
        monkeypatch.setattr(torch.optim, "SGD", spy)
        cfg = TrainConfig(epochs=3, batch_size=32, lr=0.1, weight_decay=5e-4, milestones=[2], momentum_reset=reset)
        fit(probe, *loaders(), cfg, run_dir=tmp_path / str(reset), progress=False, log=lambda m: None)
        return dict(seen)

    kept, reset = run(False), run(True)
    assert kept[1] == 0 and kept[2] > 0 and kept[3] > 0  # momentum buffers carry over
    assert reset[2] > 0 and reset[3] == 0  # epoch 3 is the first at the decayed lr: a fresh optimizer


class BatchStatTeacher(Distiller):
    teacher_bn = "batch"

    def forward(self, images, labels, ctx):
        t = self.teacher_logits(images)
        logits = self.student(images)
        return logits, {"loss": F.mse_loss(logits, t)}


def test_teacher_bn_batch_mode_uses_batch_statistics_and_keeps_weights_frozen():
    torch.manual_seed(0)
    teacher, student = tiny_net(), tiny_net()
    d = BatchStatTeacher(student, teacher)
    d.train()
    assert teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(16, 3, 32, 32) * 3 + 1
    before = teacher[1].running_mean.clone()
    t = d.teacher_logits(x)
    assert not torch.equal(teacher[1].running_mean, before)  # train-mode BN, as the official code runs it
    teacher.eval()
    assert not torch.allclose(t, teacher(x))
    d.eval()
    assert not teacher.training
    plain = Vanilla(tiny_net())
    plain.teacher = tiny_net()
    Distiller.train(plain)
    assert not plain.teacher.training  # the default stays eval


def test_paper_published_teacher_loads_strictly_with_key_and_prefix(sandbox):
    torch.manual_seed(0)
    original = create_model("resnet8")
    remote = sandbox / "remote.pt"
    torch.save({"epoch": 200, "state_dict": {f"module.{k}": v for k, v in original.state_dict().items()}}, remote)
    spec = {"url": remote.as_uri(), "file": "resnet8_own.pt", "state_key": "state_dict", "strip_prefix": "module.",
            "sha256": teachers.sha256(remote), "reported_top1": 70.0}
    model, info = teachers.load_paper_checkpoint("resnet8", spec, 100, torch.device("cpu"))
    x = torch.randn(2, 3, 32, 32)
    original.eval(), model.eval()
    torch.testing.assert_close(model(x), original(x))
    assert info["reported_top1"] == 70.0 and info["url"] == remote.as_uri()
    assert (sandbox / "data" / "teachers" / "papers" / "resnet8_own.pt").exists()
    with pytest.raises(RuntimeError, match=r"does not fit ResNet.*carry a 'module\.' prefix \(strip_prefix\)"):
        teachers.load_paper_checkpoint("resnet8", {**spec, "strip_prefix": None}, 100, torch.device("cpu"))
    bad = {**spec, "file": "other.pt", "sha256": "0" * 64}
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        teachers.paper_checkpoint(bad)
    with pytest.raises(Unavailable) as err:
        teachers.paper_checkpoint({"url": (sandbox / "nowhere.pt").as_uri(), "file": "x.pt"})
    assert "\n" not in str(err.value) and "local" in str(err.value)


def test_config_checks_the_new_keys():
    spec = {"presets": {"paper": {"dataset": "cifar100", "train": {"epochs": 1, "batch_size": 8, "lr": 0.1,
                                                                    "weight_decay": 0.0},
                                  "pairs": {"resnet56-resnet20": None}}}}
    ok = {**spec["presets"]["paper"], "augment": {"mean": [0.5] * 3, "std": [0.2] * 3, "padding_mode": "reflect"},
          "teacher_checkpoint": {"url": "https://example.org/t.pt", "file": "t.pt"}}
    cfg = resolve("x", {"presets": {"paper": ok}}, "paper", "resnet56-resnet20", 0)
    assert cfg.augment["padding_mode"] == "reflect" and cfg.teacher_checkpoint["file"] == "t.pt"
    for bad, match in (({"augment": {"padding_mode": "edge"}}, "padding_mode"),
                       ({"augment": {"jitter": 1}}, "unknown key"),
                       ({"teacher_checkpoint": {"url": "u"}}, "needs url and file")):
        with pytest.raises(UsageError, match=match):
            resolve("x", {"presets": {"paper": {**spec["presets"]["paper"], **bad}}}, "paper", "resnet56-resnet20", 0)
