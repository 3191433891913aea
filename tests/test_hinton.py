"""Hinton, Vinyals, Dean 2015 on MNIST: idx files (writer, reader, synthetic digits, download path), the
jitter augmentation, the MLPs, the loss against hand-derived values, reported numbers, and the smoke
reproduction through the CLI."""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdbench.data import DATASETS, DatasetUnavailable, DeviceLoader, load_split, make_loaders
from kdbench.data import mnist, synthetic_mnist
from kdbench.evaluate import profile
from kdbench.models import create_model

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread_module")


def _handmade_idx(path: Path, array: np.ndarray, magic: int, compress: bool) -> None:
    """An idx file written with struct (not our writer): big-endian magic, dimensions, then bytes."""
    data = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def _handmade_mnist(folder: Path, n_train: int, n_test: int, compress: bool, seed: int = 0) -> dict:
    base = folder / "MNIST" / "raw"
    base.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = {}
    for train, n in ((True, n_train), (False, n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        names = mnist.FILES[train]
        suffix = ".gz" if compress else ""
        _handmade_idx(base / f"{names[0]}{suffix}", images, 2051, compress)
        _handmade_idx(base / f"{names[1]}{suffix}", labels, 2049, compress)
        out[train] = (images, labels)
    return out


# ------------------------------------------------------------------------------------------ idx format
@pytest.mark.parametrize("shape", [(5,), (4, 28, 28), (2, 3)])
def test_idx_writer_reader_round_trip(tmp_path, shape):
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for name in ("x-idx", "x-idx.gz"):
        mnist.write_idx(array, tmp_path / name)
        back = mnist.read_idx(tmp_path / name)
        assert back.dtype == np.uint8 and back.shape == shape and np.array_equal(back, array)
    raw = (tmp_path / "x-idx").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, len(shape)])
    assert struct.unpack(f">{len(shape)}I", raw[4:4 + 4 * len(shape)]) == shape
    assert gzip.decompress((tmp_path / "x-idx.gz").read_bytes()) == raw
    mnist.write_idx(array, tmp_path / "y-idx.gz")  # no time stamp: the same array gives the same bytes
    assert (tmp_path / "y-idx.gz").read_bytes() == (tmp_path / "x-idx.gz").read_bytes()


def test_idx_reader_rejects_malformed_files(tmp_path):
    bad = tmp_path / "bad"
    for blob, match in ((b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic"),
                        (b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00\x00\x00\x00", "unsigned bytes"),
                        (b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"\x00", "data bytes")):
        bad.write_bytes(blob)
        with pytest.raises(ValueError, match=match):
            mnist.read_idx(bad)
    with pytest.raises(ValueError):
        mnist.write_idx(np.zeros((2, 2), np.float32), tmp_path / "f")


@pytest.mark.parametrize("compress", [False, True])
def test_reader_reads_a_handmade_real_format_file(tmp_path, compress):
    written = _handmade_mnist(tmp_path, 7, 3, compress)
    for train in (True, False):
        images, labels = mnist.read_split(tmp_path, train)
        x, y = written[train]
        assert images.dtype == torch.uint8 and images.shape == (len(x), 1, 28, 28) and images.is_contiguous()
        assert images[2, 0, 3, 5].item() == x[2, 3, 5]  # row-major: [n, row, column]
        assert torch.equal(images[:, 0], torch.from_numpy(x))
        assert labels.dtype == torch.int64 and labels.tolist() == y.tolist()
    # images and labels files swapped: refused
    base = tmp_path / "MNIST" / "raw"
    suffix = ".gz" if compress else ""
    a, b = (base / f"{n}{suffix}" for n in mnist.FILES[False])
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    with pytest.raises(ValueError, match="2051"):
        mnist.read_split(tmp_path, False)


def test_synthetic_mnist_files_are_byte_valid_idx(tmp_path, monkeypatch):
    folder = synthetic_mnist.ensure_synthetic_mnist(tmp_path, 6, 2)
    assert folder.name == "synthetic-mnist-6x2"
    base = folder / "MNIST" / "raw"
    names = [n for train in (True, False) for n in mnist.FILES[train]]
    assert sorted(p.name for p in base.iterdir()) == sorted(names + [f"{n}.gz" for n in names])
    for train, n in ((True, 60), (False, 20)):
        images_file, labels_file = (base / name for name in mnist.FILES[train])
        raw = images_file.read_bytes()
        assert struct.unpack(">IIII", raw[:16]) == (2051, n, 28, 28) and len(raw) == 16 + n * 784
        raw_labels = labels_file.read_bytes()
        assert struct.unpack(">II", raw_labels[:8]) == (2049, n) and len(raw_labels) == 8 + n
        assert sorted(np.bincount(np.frombuffer(raw_labels[8:], np.uint8), minlength=10)) == [n // 10] * 10
        assert gzip.decompress((base / f"{images_file.name}.gz").read_bytes()) == raw
        assert gzip.decompress((base / f"{labels_file.name}.gz").read_bytes()) == raw_labels
    # torchvision's MNIST reads the files as our reader does
    from torchvision.datasets import MNIST
    for train in (True, False):
        tv = MNIST(str(folder), train=train, download=False)
        images, labels = mnist.read_split(folder, train)
        assert torch.equal(tv.data, images[:, 0]) and torch.equal(tv.targets, labels)
    # deterministic and idempotent: same bytes elsewhere, a matching folder is not rewritten
    other = synthetic_mnist.ensure_synthetic_mnist(tmp_path / "b", 6, 2)
    assert all((base / f).read_bytes() == (other / "MNIST" / "raw" / f).read_bytes() for f in names)
    stamp = (base / names[0]).stat().st_mtime_ns
    assert synthetic_mnist.ensure_synthetic_mnist(tmp_path, 6, 2) == folder
    assert (base / names[0]).stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", folder.name]  # no temporary leftovers


def test_synthetic_mnist_loads_like_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path))
    images, labels = load_split("synthetic-mnist", True, subset={"train_per_class": 20, "test_per_class": 5})
    assert images.shape == (200, 1, 28, 28) and torch.bincount(labels).tolist() == [20] * 10
    x = images.float() / 255  # white digits on black, about MNIST's pixel statistics
    assert abs(x.mean().item() - 0.1307) < 0.04 and abs(x.std().item() - 0.3081) < 0.08
    assert (tmp_path / "synthetic-mnist-20x5" / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_mnist_is_registered():
    for name in ("mnist", "synthetic-mnist"):
        info = DATASETS[name]
        assert (info["num_classes"], info["image_size"], info["channels"], info["layout"]) == (10, 28, 1, "mnist")
        assert info["mean"] == (0.1307,) and info["std"] == (0.3081,)
        assert info["padding"] == 0 and info["flip"] is False  # students: no augmentation
    assert DATASETS["synthetic-mnist"]["synthetic"] and not DATASETS["mnist"]["synthetic"]
    assert all(DATASETS[n]["channels"] == 3 for n in ("cifar100", "cifar10", "imagenet"))
    assert all((DATASETS[n]["padding"], DATASETS[n]["flip"]) == (4, True) for n in ("cifar100", "synthetic-cifar10"))


# ------------------------------------------------------------------------------------ download path
def test_missing_mnist_goes_through_the_torchvision_download(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path))
    calls = []

    def fake_download(folder):  # stands in for torchvision.datasets.MNIST(folder, download=True)
        calls.append(folder)
        written.update(_handmade_mnist(folder, 12, 4, compress=True))
        md5.update({p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (folder / "MNIST" / "raw").iterdir()})
    written: dict = {}
    md5 = dict.fromkeys(mnist.md5s(), "0" * 32)  # the archives' md5, as torchvision knows those of the real ones
    monkeypatch.setattr(mnist, "download", fake_download)
    monkeypatch.setattr(mnist, "md5s", lambda: md5)
    images, labels = load_split("mnist", False)
    assert calls == [tmp_path / "mnist"]
    assert torch.equal(images[:, 0], torch.from_numpy(written[False][0]))
    assert labels.tolist() == written[False][1].tolist()
    load_split("mnist", True)
    assert len(calls) == 1  # present: no second download
    # subset of a real dataset: the first n of every class in file order
    images, labels = load_split("mnist", True, subset={"train_per_class": 1})
    assert len(labels) == len(set(written[True][1].tolist())) == len(set(labels.tolist()))


def test_missing_mnist_without_network_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path))

    def no_network(folder):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got:\n<urlopen error>")
    monkeypatch.setattr(mnist, "download", no_network)
    with pytest.raises(DatasetUnavailable) as exc:
        load_split("mnist", True)
    msg = str(exc.value)
    assert "\n" not in msg and str(tmp_path / "mnist") in msg and "KDBENCH_DATA" in msg
    assert "PRESET=smoke (synthetic-mnist)" in msg
    with pytest.raises(DatasetUnavailable, match="disabled"):
        load_split("mnist", True, download=False)


def test_download_calls_torchvision_mnist(tmp_path, monkeypatch):
    """The real download is torchvision's MNIST(root, download=True) on our folder."""
    import torchvision.datasets
    seen = {}

    class FakeMNIST:
        def __init__(self, root, train=True, download=False):
            seen.update(root=root, download=download)
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    mnist.download(tmp_path / "mnist")
    assert seen == {"root": str(tmp_path / "mnist"), "download": True}


# --------------------------------------------------------------------------------------- jitter
def _digits(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g), torch.arange(n) % 10


def _loader(x, y, seed, **kw):
    # mean 0, std 1/255: the normalised batch is the uint8 image as float
    return DeviceLoader(x, y, batch_size=16, device="cpu", mean=(0.0,), std=(1 / 255,), train=True, seed=seed, **kw)


def _translate(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` (C x H x W) moved down by dy and right by dx, zero-filled."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_jitter_is_a_bounded_translation_without_flip():
    x, y = _digits()
    loader = _loader(x, y, seed=3, padding=2, flip=False)
    assert loader.num_views == 25
    for epoch in range(2):
        loader.set_epoch(epoch)
        plan = loader.epoch_plan()
        assert not plan["flips"].any()
        assert plan["offsets"].min() >= 0 and plan["offsets"].max() <= 4
        for images, labels, idx in loader:
            assert images.shape[1:] == (1, 28, 28) and torch.equal(labels, y[idx])
            for image, i in zip(images, idx.tolist()):
                top, left = plan["offsets"][i].tolist()
                dy, dx = 2 - top, 2 - left  # crop of the 2-padded image = translation by (dy, dx)
                assert torch.equal(image, _translate(x[i], dy, dx).float())
                matches = [(a, b) for a in range(-4, 5) for b in range(-4, 5)
                           if torch.equal(image, _translate(x[i], a, b).float())]
                assert matches == [(dy, dx)] and max(abs(dy), abs(dx)) <= 2  # no other shift, no mirror
                assert not torch.equal(image, _translate(x[i], dy, dx).flip(-1).float())
    shifts = {(2 - top, 2 - left) for e in range(10) for top, left in loader.epoch_plan(e)["offsets"].tolist()}
    assert shifts == {(a, b) for a in range(-2, 3) for b in range(-2, 3)}  # every shift of +-2 px occurs


def test_jitter_is_deterministic_per_seed_and_epoch():
    x, y = _digits()

    def epoch(seed, e):
        loader = _loader(x, y, seed=seed, padding=2, flip=False)
        loader.set_epoch(e)
        return torch.cat([b[0] for b in loader]), torch.cat([b[2] for b in loader])
    a, b = epoch(5, 1), epoch(5, 1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(epoch(5, 2)[0], a[0]) and not torch.equal(epoch(6, 1)[0], a[0])


def test_no_augmentation_and_cifar_default_unchanged():
    x, y = _digits()
    plain = _loader(x, y, seed=1, padding=0, flip=False)
    plain.set_epoch(0)
    images, _, idx = next(iter(plain))
    assert torch.equal(images, x[idx].float()) and plain.num_views == 1
    # the CIFAR default is the explicit padding 4 + flip, draw for draw
    g = torch.Generator().manual_seed(0)
    c = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=g)
    default = DeviceLoader(c, y[:20], batch_size=8, device="cpu", mean=(0, 0, 0), std=(1, 1, 1), train=True, seed=2)
    explicit = DeviceLoader(c, y[:20], batch_size=8, device="cpu", mean=(0, 0, 0), std=(1, 1, 1), train=True, seed=2,
                            padding=4, flip=True)
    assert default.num_views == 162 and all(torch.equal(a[0], b[0]) for a, b in zip(default, explicit))
    assert default.epoch_plan()["flips"].any()
    with pytest.raises(ValueError, match="padding"):
        _loader(x, y, seed=0, padding=-1)
    with pytest.raises(ValueError, match="flip"):
        _loader(x, y, seed=0, flip="no")


def test_make_loaders_mnist_default_and_jitter(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path))
    subset = {"train_per_class": 4, "test_per_class": 2}
    train, test, classes = make_loaders("synthetic-mnist", batch_size=8, device="cpu", subset=subset)
    assert classes == 10 and (train.padding, train.flip, train.num_views) == (0, False, 1)
    images, _, idx = next(iter(test))
    expected = (test.images[idx].float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(images, expected)
    jitter, _, _ = make_loaders("synthetic-mnist", batch_size=8, device="cpu", subset=subset,
                                augment={"padding": 2, "flip": False})
    assert (jitter.padding, jitter.flip, jitter.num_views) == (2, False, 25)
    cifar, _, _ = make_loaders("synthetic-cifar10", batch_size=8, device="cpu", subset=subset)
    assert (cifar.padding, cifar.flip) == (4, True)
    with pytest.raises(ValueError, match="unknown augment"):
        make_loaders("synthetic-mnist", batch_size=8, device="cpu", subset=subset, augment={"rotate": 5})


# ---------------------------------------------------------------------------------------- models
def test_mlps_and_their_profile():
    torch.manual_seed(0)
    teacher, student = create_model("mlp_1200_1200", num_classes=10), create_model("mlp_800_800", num_classes=10)
    x = torch.randn(3, 1, 28, 28)
    for model, widths, drop in ((teacher, (784, 1200, 1200, 10), (0.2, 0.5)), (student, (784, 800, 800, 10), (0.0, 0.0))):
        assert (model.input_dropout.p, model.hidden_dropout.p) == drop
        macs = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
        assert sum(p.numel() for p in model.parameters()) == macs + sum(widths[1:])
        model.eval()
        out = model.forward_features(x)
        torch.testing.assert_close(out.logits, model(x))
        assert out.logits.shape == (3, 10) and [f.shape[1] for f in out.feats] == model.feature_channels()
        assert all(torch.equal(f, F.relu(p)) for f, p in zip(out.feats, out.preact_feats))
        prof = profile(model, image_size=28, iters=2, warmup=1, throughput_batch=4)  # 1 x 28 x 28 input
        assert prof["macs"] == macs and prof["latency_b1"]["median_ms"] > 0
    teacher.train()
    assert not torch.equal(teacher(x), teacher(x))  # dropout in training
    student.train()
    assert torch.equal(student(x), student(x))


# ------------------------------------------------------------------------------------------ loss
def test_loss_against_hand_derived_values():
    from reproductions.hinton.loss import distillation_loss, soft_target_loss
    t, ln3 = 2.0, math.log(3.0)
    student = torch.tensor([[0.0, 0.0], [2 * ln3, 0.0]])
    teacher = torch.tensor([[2 * ln3, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    # at T = 2: sample 1 teacher (3/4, 1/4) vs student (1/2, 1/2); sample 2 teacher (1/2, 1/2) vs student (3/4, 1/4)
    kl1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    kl2 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    soft = t * t * (kl1 + kl2) / 2
    # at T = 1: sample 1 student (1/2, 1/2), label 0; sample 2 student (9/10, 1/10), label 1
    hard = (math.log(2.0) + math.log(10.0)) / 2
    assert soft_target_loss(student, teacher, t).item() == pytest.approx(soft, rel=1e-6)
    terms = distillation_loss(student, teacher, labels, t, soft_weight=0.9, hard_weight=0.1)
    assert terms["loss_kd"].item() == pytest.approx(0.9 * soft, rel=1e-6)
    assert terms["loss_ce"].item() == pytest.approx(0.1 * hard, rel=1e-6)
    # the T^2 factor: the soft gradient w.r.t. the student logits is T (q_student - q_teacher) / batch
    z = student.clone().requires_grad_(True)
    soft_target_loss(z, teacher, t).backward()
    q_s, q_t = torch.tensor([[0.5, 0.5], [0.75, 0.25]]), torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    torch.testing.assert_close(z.grad, t * (q_s - q_t) / 2)


def test_method_with_and_without_teacher():
    from reproductions.hinton.method import HintonKD
    from kdbench.distiller import StepContext
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x, y, ctx = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]), StepContext(epoch=1, epochs=1)
    logits, terms = HintonKD(student, teacher, temperature=20.0)(x, y, ctx)
    with torch.no_grad():
        t_logits = teacher(x)
    assert set(terms) == {"loss_ce", "loss_kd"}
    torch.testing.assert_close(terms["loss_ce"], 0.1 * F.cross_entropy(logits, y))
    p_t = F.softmax(t_logits / 20, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(logits / 20, 1))).sum(1).mean()
    torch.testing.assert_close(terms["loss_kd"], 0.9 * 400 * kl)
    logits, terms = HintonKD(student, None)(x, y, ctx)  # the hard-label baseline
    assert set(terms) == {"loss_ce"}
    torch.testing.assert_close(terms["loss_ce"], F.cross_entropy(logits, y))


# ----------------------------------------------------------------------------- reported numbers
def test_test_errors_are_converted_to_accuracy():
    from kdbench.registry import _acc, get_paper
    assert _acc("74", "test_errors") == 99.26 and _acc("146", "test_errors") == 98.54
    assert _acc("", "test_errors") is None and _acc("2.5", "top1_err") == 97.5 and _acc("71.2", "top1") == 71.2
    paper = get_paper("hinton")
    targets = paper.targets("paper")
    assert set(targets) == {"mlp_1200_1200-mlp_800_800", "mlp_800_800"}
    kd, alone = targets["mlp_1200_1200-mlp_800_800"], targets["mlp_800_800"]
    assert (kd.top1, kd.teacher_top1, kd.student_top1) == (99.26, 99.33, 98.54) and alone.top1 == 98.54
    assert kd.source == alone.source == "THIRD-PARTY TRANSCRIPTION: several independent write-ups agree"
    assert kd.flagged == alone.flagged == "THIRD-PARTY" and kd.dataset == "mnist"
    assert paper.spec["statistic"] == "last" and paper.spec["defaults"]["method"]["temperature"] == 20.0


# ----------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_smoke_preset_through_the_cli(sandbox):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # sandbox: KDBENCH_DATA/RUNS/RESULTS in tmp
    cmd = [sys.executable, "-m", "kdbench", "reproduce", "hinton", "--preset", "smoke", "--latency-iters", "3"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training teacher mlp_1200_1200 on synthetic-mnist" in done.stdout
    (path,) = (sandbox / "results").glob("hinton/smoke/mlp_1200_1200-mlp_800_800/seed0.json")
    rec = json.loads(path.read_text())
    assert rec["dataset"] == "synthetic-mnist" and rec["method"] == "HintonKD" and rec["statistic"] == "last"
    assert rec["reported_top1"] == rec["last_top1"] and rec["epochs"] == 3
    assert rec["teacher_info"]["source"] == "train" and rec["config"]["method"]["temperature"] == 20.0
    assert rec["macs"] == 784 * 800 + 800 * 800 + 800 * 10 and rec["params"]["student"] == 1_276_810
    assert rec["best_top1"] > 20.0  # 10 classes: well above chance
    log = [json.loads(line) for line in
           (sandbox / "runs/hinton/smoke/mlp_1200_1200-mlp_800_800/seed0/log-main.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2, 3] and {"loss_ce", "loss_kd"} <= set(log[0])
    assert (sandbox / "data" / "synthetic-mnist-40x20" / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").is_file()
    # the teacher-free pair: the same student on hard labels alone
    done = subprocess.run([*cmd, "--pair", "mlp_800_800"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    alone = json.loads((sandbox / "results/hinton/smoke/mlp_800_800/seed0.json").read_text())
    assert alone["teacher_info"] == {"source": "none"} and alone["best_top1"] > 20.0
