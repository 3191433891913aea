"""The data layer: on-disk format, reader, synthetic data, device loader, download failures."""
from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from kdbench.data import DATASETS, DatasetUnavailable, DeviceLoader, data_root, load_split, make_loaders
from kdbench.data import cifar, synthetic
from kdbench.data.imagenet import imagenet_folder
from kdbench.data.loader import rotate_nearest

CIFAR100 = DATASETS["cifar100"]


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one intra-op thread is as fast, and immune to OpenMP oversubscription when the
    machine is busy (with 2 cores shared with another process, 2 threads can be 100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """One data folder with both default synthetic datasets, generated once for the session."""
    root = tmp_path_factory.mktemp("kdbench-data")
    for name in ("synthetic-cifar100", "synthetic-cifar10"):
        synthetic.ensure_synthetic(name, root)
    return root


@pytest.fixture
def synth(synth_root, monkeypatch) -> Path:
    monkeypatch.setenv("KDBENCH_DATA", str(synth_root))
    return synth_root


@pytest.fixture
def empty_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path))
    return tmp_path


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------- data folder
def test_data_root_env_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path / "d"))
    assert data_root() == tmp_path / "d"
    monkeypatch.delenv("KDBENCH_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / ".cache" / "kdbench" / "data"


def test_dataset_info():
    assert DATASETS["cifar100"]["mean"] == (0.5071, 0.4867, 0.4408)
    assert DATASETS["cifar100"]["std"] == (0.2675, 0.2565, 0.2761)
    assert DATASETS["cifar10"]["mean"] == (0.4914, 0.4822, 0.4465)
    assert DATASETS["cifar10"]["std"] == (0.2470, 0.2435, 0.2616)
    for real in ("cifar100", "cifar10"):
        for key in ("num_classes", "mean", "std", "image_size"):
            assert DATASETS[f"synthetic-{real}"][key] == DATASETS[real][key]
    assert DATASETS["imagenet"]["num_classes"] == 1000
    assert {DATASETS[n]["image_size"] for n in ("cifar100", "cifar10", "synthetic-cifar10")} == {32}


def test_unknown_dataset_is_one_line_keyerror(empty_root):
    with pytest.raises(KeyError) as exc:
        load_split("cifar1000", True)
    msg = exc.value.args[0]
    assert "\n" not in msg and "cifar1000" in msg
    assert all(name in msg for name in DATASETS)
    with pytest.raises(KeyError):
        make_loaders("nope", batch_size=8, device="cpu", seed=0)


# ------------------------------------------------------------------------------- on-disk format
def test_layout_matches_torchvision():
    from torchvision.datasets import CIFAR10, CIFAR100
    for layout, cls in ((cifar.LAYOUTS["cifar100"], CIFAR100), (cifar.LAYOUTS["cifar10"], CIFAR10)):
        assert layout.folder == cls.base_folder
        assert list(layout.train_files) == [f for f, _ in cls.train_list]
        assert list(layout.test_files) == [f for f, _ in cls.test_list]
        assert layout.meta_file == cls.meta["filename"]
        src = cifar.source(layout.name)
        assert src["url"] == cls.url and src["md5"] == cls.tgz_md5


def test_synthetic_cifar100_files_have_the_real_format(synth):
    base = synth / "synthetic-cifar100" / "cifar-100-python"
    assert sorted(p.name for p in base.iterdir()) == ["meta", "test", "train"]
    for split, n in (("train", 5000), ("test", 1000)):
        raw = (base / split).read_bytes()
        assert raw[:2] == b"\x80\x02"  # protocol 2, as written by Python 2's cPickle
        d = pickle.loads(raw, encoding="bytes")
        assert set(d) == {b"filenames", b"batch_label", b"fine_labels", b"coarse_labels", b"data"}
        assert isinstance(d[b"data"], np.ndarray) and d[b"data"].dtype == np.uint8
        assert d[b"data"].shape == (n, 3072)
        assert len(d[b"fine_labels"]) == len(d[b"coarse_labels"]) == len(d[b"filenames"]) == n
        assert all(type(v) is int for v in d[b"fine_labels"][:50])
        assert isinstance(d[b"filenames"][0], bytes) and d[b"filenames"][0].endswith(b".png")
        assert d[b"batch_label"] == (b"training batch 1 of 1" if split == "train" else b"testing batch 1 of 1")
        assert sorted(set(d[b"fine_labels"])) == list(range(100))
        # the coarse labels follow the official fine -> coarse map
        fine2coarse = np.array(synthetic.CIFAR100_FINE_TO_COARSE)
        assert (fine2coarse[d[b"fine_labels"]] == np.array(d[b"coarse_labels"])).all()
        # like the real files, latin1 decoding gives str keys (what torchvision relies on)
        assert "data" in pickle.loads(raw, encoding="latin1")
    meta = pickle.loads((base / "meta").read_bytes(), encoding="bytes")
    assert set(meta) == {b"fine_label_names", b"coarse_label_names"}
    assert len(meta[b"fine_label_names"]) == 100 and len(meta[b"coarse_label_names"]) == 20
    assert meta[b"fine_label_names"][0] == b"apple" and meta[b"coarse_label_names"][0] == b"aquatic_mammals"
    assert np.bincount(synthetic.CIFAR100_FINE_TO_COARSE).tolist() == [5] * 20


def test_synthetic_cifar10_files_have_the_real_format(synth):
    base = synth / "synthetic-cifar10" / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    assert sorted(p.name for p in base.iterdir()) == sorted(names)
    for i in range(1, 6):
        d = pickle.loads((base / f"data_batch_{i}").read_bytes(), encoding="bytes")
        assert set(d) == {b"batch_label", b"labels", b"data", b"filenames"}
        assert d[b"data"].dtype == np.uint8 and d[b"data"].shape == (1000, 3072)
        assert d[b"batch_label"] == f"training batch {i} of 5".encode()
    meta = pickle.loads((base / "batches.meta").read_bytes(), encoding="bytes")
    assert meta[b"label_names"][3] == b"cat" and meta[b"num_vis"] == 3072 and meta[b"num_cases_per_batch"] == 1000


def test_torchvision_reads_the_synthetic_files_like_our_reader(synth, monkeypatch):
    """A third-party reader of the official format sees the same images and labels."""
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # md5s are the real files'
    for name, cls in (("synthetic-cifar100", tv_cifar.CIFAR100), ("synthetic-cifar10", tv_cifar.CIFAR10)):
        for train in (True, False):
            tv = cls(str(synth / name), train=train, download=False)
            images, labels = load_split(name, train)
            assert torch.equal(torch.from_numpy(tv.data).permute(0, 3, 1, 2), images)
            assert labels.tolist() == tv.targets
        assert tv.classes == cifar.read_meta(synth / name, name.removeprefix("synthetic-"))["label_names"]


@pytest.mark.parametrize("name,classes,n_train,n_test", [("synthetic-cifar100", 100, 5000, 1000),
                                                         ("synthetic-cifar10", 10, 5000, 1000)])
def test_load_split_synthetic(synth, name, classes, n_train, n_test):
    for train, n in ((True, n_train), (False, n_test)):
        images, labels = load_split(name, train)
        assert images.dtype == torch.uint8 and images.shape == (n, 3, 32, 32) and images.is_contiguous()
        assert labels.dtype == torch.int64 and labels.shape == (n,)
        assert labels.min() >= 0 and labels.max() < classes
        assert torch.bincount(labels, minlength=classes).tolist() == [n // classes] * classes
    # pixel statistics imitate the real dataset's
    mean = images.float().mean((0, 2, 3)) / 255
    std = images.float().std((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(DATASETS[name]["mean"]), atol=0.03)
    assert torch.allclose(std, torch.tensor(DATASETS[name]["std"]), atol=0.05)


def _handmade_cifar100(folder: Path, n: int, seed: int = 0, str_keys: bool = False):
    """Tiny CIFAR-100 files written with the plain pickle module (not our writer)."""
    rng = np.random.default_rng(seed)
    base = folder / "cifar-100-python"
    base.mkdir(parents=True)
    out = {}
    for split in ("train", "test"):
        data_ = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        d = {b"filenames": [f"x_{i}.png".encode() for i in range(n)], b"batch_label": b"training batch 1 of 1",
             b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine], b"data": data_}
        if str_keys:
            d = {k.decode(): v for k, v in d.items()}
        with open(base / split, "wb") as fh:
            pickle.dump(d, fh, protocol=2)
        out[split] = (data_, fine)
    with open(base / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [b"c%d" % i for i in range(100)],
                     b"coarse_label_names": [b"g%d" % i for i in range(20)]}, fh, protocol=2)
    return out


@pytest.mark.parametrize("str_keys", [False, True])
def test_reader_reads_a_handmade_real_format_file(tmp_path, str_keys):
    written = _handmade_cifar100(tmp_path, 7, str_keys=str_keys)
    for split in ("train", "test"):
        images, labels = cifar.read_split(tmp_path, "cifar100", train=split == "train")
        data_, fine = written[split]
        assert images.dtype == torch.uint8 and images.shape == (7, 3, 32, 32)
        # row = 1024 R, 1024 G, 1024 B, each row-major
        assert images[2, 1, 3, 5].item() == data_[2, 1024 + 3 * 32 + 5]
        assert torch.equal(images.reshape(7, -1), torch.from_numpy(data_))
        assert labels.dtype == torch.int64 and labels.tolist() == fine
    assert cifar.read_meta(tmp_path, "cifar100")["label_names"][:2] == ["c0", "c1"]


def test_reader_rejects_code_in_pickles(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    with open(base / "train", "wb") as fh:
        pickle.dump({b"data": __import__("os").getcwd}, fh, protocol=2)  # a global that is not numpy
    with pytest.raises(pickle.UnpicklingError):
        cifar.read_split(tmp_path, "cifar100", True)


# ------------------------------------------------------------------------------ synthetic dataset
def test_synthetic_is_deterministic_idempotent_and_atomic(tmp_path):
    a = synthetic.ensure_synthetic("synthetic-cifar10", tmp_path / "a", 20, 5)
    b = synthetic.ensure_synthetic("synthetic-cifar10", tmp_path / "b", 20, 5)
    assert a.name == "synthetic-cifar10-20x5"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all(_md5(a / f) == _md5(b / f) for f in files)  # same bytes wherever generated
    train = a / "cifar-10-batches-py" / "data_batch_1"
    stamp = train.stat().st_mtime_ns
    assert synthetic.ensure_synthetic("synthetic-cifar10", tmp_path / "a", 20, 5) == a
    assert train.stat().st_mtime_ns == stamp  # present and matching: not rewritten
    assert [p.name for p in (tmp_path / "a").iterdir()] == [a.name]  # no temporary leftovers
    # a marker that does not match the generation parameters means: regenerate
    marker = a / synthetic.MARKER
    marker.write_text(marker.read_text().replace('"seed"', '"seed_old"'))
    synthetic.ensure_synthetic("synthetic-cifar10", tmp_path / "a", 20, 5)
    assert synthetic._marker_ok(a, synthetic.params("synthetic-cifar10", 20, 5), cifar.LAYOUTS["cifar10"])
    assert all(_md5(a / f) == _md5(b / f) for f in files)


def test_synthetic_generation_default_size():
    out = synthetic.generate("synthetic-cifar100", 50, 10)
    assert out["train"][0].shape == (5000, 3, 32, 32)


def test_synthetic_siblings_are_alike():
    """Classes of one coarse group share structure (dark knowledge): their templates are closer."""
    t = torch.from_numpy(synthetic.templates("synthetic-cifar100")).flatten(1)
    groups = torch.tensor(synthetic.CIFAR100_FINE_TO_COARSE)
    d = torch.cdist(t, t)
    same = groups[:, None] == groups[None, :]
    off_diag = ~torch.eye(100, dtype=torch.bool)
    assert d[same & off_diag].mean() < 0.8 * d[~same].mean()


def test_subset_sizes(synth):
    images, labels = load_split("synthetic-cifar100", True, subset={"train_per_class": 3, "test_per_class": 2})
    assert images.shape[0] == 300 and torch.bincount(labels).tolist() == [3] * 100
    assert (synth / "synthetic-cifar100-3x2" / "cifar-100-python" / "train").is_file()
    with pytest.raises(ValueError):
        load_split("synthetic-cifar100", True, subset={"per_class": 3})


def test_synthetic_is_learnable_quickly(synth):
    """A tiny CNN trained for a few seconds on CPU is far above chance (1%) on synthetic CIFAR-100."""
    torch.manual_seed(0)
    train, test, num_classes = make_loaders("synthetic-cifar100", batch_size=64, device="cpu", seed=0,
                                            test_batch_size=500)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(32, num_classes))
    epochs = 3
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=epochs * len(train))
    for epoch in range(epochs):
        train.set_epoch(epoch)
        for images, labels, _ in train:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y, _ in test)
    print(f"tiny CNN test accuracy {correct / 10:.1f}%")
    assert correct / 1000 > 0.10  # > 10x chance


# ---------------------------------------------------------------------------------------- loader
def _toy(n=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 5


def _reference(img_u8: torch.Tensor, top: int, left: int, flip: bool, mean, std) -> torch.Tensor:
    """torchvision's CPU pipeline for one sample: ToTensor, RandomCrop(32, padding=4), flip, Normalize
    (the crop of a zero-padded uint8 image equals the crop of the padded ToTensor output)."""
    x = TF.pad(img_u8, [4, 4, 4, 4], fill=0)
    x = TF.crop(x, top, left, 32, 32)
    if flip:
        x = TF.hflip(x)
    return TF.normalize(x.float() / 255.0, list(mean), list(std))


def test_train_batches_shapes_and_consistency():
    x, y = _toy()
    loader = DeviceLoader(x, y, batch_size=8, device="cpu", mean=CIFAR100["mean"], std=CIFAR100["std"],
                          train=True, seed=3)
    assert len(loader) == 5
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [8, 8, 8, 8, 5]  # the last short batch is kept
    for images, labels, indices in batches:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 32) and images.is_contiguous()
        assert labels.dtype == torch.int64 and indices.dtype == torch.int64
        assert images.device.type == labels.device.type == indices.device.type == "cpu"
        assert torch.equal(labels, y[indices])
    low = (0 - torch.tensor(CIFAR100["mean"])) / torch.tensor(CIFAR100["std"])
    high = (1 - torch.tensor(CIFAR100["mean"])) / torch.tensor(CIFAR100["std"])
    allx = torch.cat([b[0] for b in batches])
    assert (allx.amin((0, 2, 3)) >= low - 1e-5).all() and (allx.amax((0, 2, 3)) <= high + 1e-5).all()
    dropped = DeviceLoader(x, y, batch_size=8, device="cpu", mean=CIFAR100["mean"], std=CIFAR100["std"],
                           train=True, drop_last=True)
    assert len(dropped) == 4 and sum(b[0].shape[0] for b in dropped) == 32


def test_augmentation_matches_torchvision_reference():
    x, y = _toy()
    mean, std = CIFAR100["mean"], CIFAR100["std"]
    loader = DeviceLoader(x, y, batch_size=16, device="cpu", mean=mean, std=std, train=True, seed=11)
    loader.set_epoch(4)
    plan = loader.epoch_plan()
    assert plan["flips"].any() and (~plan["flips"]).any()
    checked = 0
    for images, _, indices in loader:
        for j in range(0, len(indices), 3):
            i = indices[j].item()
            top, left = plan["offsets"][i].tolist()
            ref = _reference(x[i], top, left, bool(plan["flips"][i]), mean, std)
            torch.testing.assert_close(images[j], ref, atol=1e-5, rtol=0)
            checked += 1
    assert checked >= 12
    # every offset/flip combination the loader can draw, against the reference
    idx = torch.arange(10)
    for top, left, flip in [(0, 0, False), (8, 8, True), (0, 8, True), (8, 0, False), (3, 5, True)]:
        n = len(idx)
        out = loader._normalise(loader._augment(idx, torch.full((n,), top), torch.full((n,), left),
                                                torch.full((n,), flip)))
        for i in (0, 9):
            torch.testing.assert_close(out[i], _reference(x[i], top, left, flip, mean, std), atol=1e-5, rtol=0)
    # centre crop without flip is the unaugmented normalised image
    centre = torch.full((10,), 4)
    out = loader._normalise(loader._augment(idx, centre, centre, torch.zeros(10, dtype=torch.bool)))
    expected = (x[:10].float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def _pil_pipeline(img_u8: torch.Tensor, top: int, left: int, flip: bool, angle: float, mean, std) -> torch.Tensor:
    """Tf-KD's transform on a PIL image as torchvision runs it: RandomCrop(32, padding=4), horizontal
    flip, RandomRotation (nearest, fill 0) at ``angle``, ToTensor, Normalize."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    img = Image.fromarray(img_u8.permute(1, 2, 0).numpy())
    img = TF.crop(TF.pad(img, [4, 4, 4, 4], fill=0), top, left, 32, 32)
    if flip:
        img = TF.hflip(img)
    img = TF.rotate(img, angle, interpolation=InterpolationMode.NEAREST, fill=0)
    return TF.normalize(TF.to_tensor(img), list(mean), list(std))


def test_rotation_matches_pillow_exactly():
    """The device rotation is pixel for pixel what Pillow computes, for odd and even sizes, one and three
    channels, and the angles where rounding is delicate (0, the extremes, tiny ones)."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    g = torch.Generator().manual_seed(0)
    for size, ch in ((32, 3), (28, 1), (31, 3)):
        x = torch.randint(1, 256, (40, ch, size, size), dtype=torch.uint8, generator=g)
        angles = [0.0, 15.0, -15.0, 7.5, -1e-4, 14.99999, 45.0, -90.0] + torch.empty(32).uniform_(
            -30, 30, generator=g).tolist()
        ours = rotate_nearest(x, angles)
        assert (ours == 0).any() and not torch.equal(ours[1], x[1])  # corners filled, images moved
        for i, angle in enumerate(angles):
            arr = x[i].permute(1, 2, 0).numpy()
            pil = TF.rotate(Image.fromarray(arr[..., 0] if ch == 1 else arr), angle,
                            interpolation=InterpolationMode.NEAREST)
            ref = torch.from_numpy(np.asarray(pil).copy()).reshape(size, size, ch).permute(2, 0, 1)
            assert torch.equal(ours[i], ref), (size, ch, angle)


def test_loader_rotation_is_torchvisions_crop_flip_rotate_and_has_no_view_ids():
    x, y = _toy()
    mean, std = CIFAR100["mean"], CIFAR100["std"]
    plain = DeviceLoader(x, y, batch_size=16, device="cpu", mean=mean, std=std, train=True, seed=11)
    loader = DeviceLoader(x, y, batch_size=16, device="cpu", mean=mean, std=std, train=True, seed=11, rotation=15)
    for ld in (plain, loader):
        ld.set_epoch(2)
    plan, base = loader.epoch_plan(), plain.epoch_plan()
    for key in ("order", "offsets", "flips"):  # the rotation is drawn after, the crops and flips stay
        assert torch.equal(plan[key], base[key])
    angles = plan["angles"]
    assert angles.abs().max() <= 15 and angles.min() < -5 and angles.max() > 5
    assert loader.num_views is None and plain.num_views == 162
    checked = 0
    for images, _, indices, views in loader.batches():
        assert views is None
        for j in range(0, len(indices), 4):
            i = indices[j].item()
            top, left = plan["offsets"][i].tolist()
            ref = _pil_pipeline(x[i], top, left, bool(plan["flips"][i]), float(angles[i]), mean, std)
            torch.testing.assert_close(images[j], ref, atol=1e-5, rtol=0)
            checked += 1
    assert checked >= 10
    test = DeviceLoader(x, y, batch_size=16, device="cpu", mean=mean, std=std, train=False, rotation=15)
    assert torch.equal(next(iter(test))[0], next(iter(DeviceLoader(
        x, y, batch_size=16, device="cpu", mean=mean, std=std, train=False)))[0])  # evaluation never rotates
    with pytest.raises(ValueError, match="rotation"):
        DeviceLoader(x, y, batch_size=16, device="cpu", mean=mean, std=std, train=True, rotation=-1)


def test_same_class_partners_are_rotated_independently():
    x, y = _toy()
    loader = DeviceLoader(x, y, batch_size=8, device="cpu", mean=CIFAR100["mean"], std=CIFAR100["std"],
                          train=True, seed=1, rotation=15, same_class_pairs=True)
    plan = loader.epoch_plan()
    assert not torch.equal(plan["angles"], plan["partner_angles"])
    images, labels, indices, _ = next(loader.batches())
    assert images.shape[0] == 16 and torch.equal(labels[:8], labels[8:])


def test_padding_normalises_to_minus_mean_over_std():
    x = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
    mean, std = CIFAR100["mean"], CIFAR100["std"]
    loader = DeviceLoader(x, torch.zeros(64, dtype=torch.long), batch_size=64, device="cpu", mean=mean,
                          std=std, train=True, seed=0)
    plan = loader.epoch_plan()
    images, _, indices = next(iter(loader))
    pad = (0 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    full = (1 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    for j, i in enumerate(indices.tolist()):
        top, left = plan["offsets"][i].tolist()
        is_pad = torch.isclose(images[j], pad.expand(3, 32, 32))
        assert torch.isclose(images[j][~is_pad], full.expand(3, 32, 32)[~is_pad]).all()
        padded_rows = abs(top - 4)
        padded_cols = abs(left - 4)
        assert is_pad[0].sum().item() == 32 * 32 - (32 - padded_rows) * (32 - padded_cols)


def test_epochs_visit_every_index_once_and_are_reproducible():
    x, y = _toy(101)
    kw = dict(batch_size=16, device="cpu", mean=CIFAR100["mean"], std=CIFAR100["std"], train=True)
    a = DeviceLoader(x, y, seed=5, **kw)
    b = DeviceLoader(x, y, seed=5, **kw)
    c = DeviceLoader(x, y, seed=6, **kw)
    orders = {}
    for epoch in (1, 2):
        for loader in (a, b, c):
            loader.set_epoch(epoch)
        ba, bb, ba2 = list(a), list(b), list(a)  # a twice: iterating does not change the epoch's draws
        idx = torch.cat([i for _, _, i in ba])
        assert torch.equal(idx.sort().values, torch.arange(101))
        for (xa, ya, ia), (xb, yb, ib), (xa2, _, ia2) in zip(ba, bb, ba2):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
            assert torch.equal(xa, xa2) and torch.equal(ia, ia2)
        orders[epoch] = idx
        assert not torch.equal(idx, torch.cat([i for _, _, i in c]))  # another seed, another order
    assert not torch.equal(orders[1], orders[2])  # another epoch, another order
    # the augmentation of a sample does not depend on the batch size
    d = DeviceLoader(x, y, seed=5, **{**kw, "batch_size": 7})
    d.set_epoch(2)
    by_index = {i.item(): img for imgs, _, ids in d for img, i in zip(imgs, ids)}
    for imgs, _, ids in ba:
        for img, i in zip(imgs, ids):
            assert torch.equal(img, by_index[i.item()])


def test_test_loader_is_ordered_and_unaugmented():
    x, y = _toy(50)
    mean, std = CIFAR100["mean"], CIFAR100["std"]
    loader = DeviceLoader(x, y, batch_size=16, device="cpu", mean=mean, std=std, train=False, seed=1)
    first, second = list(loader), list(loader)
    loader.set_epoch(7)
    third = list(loader)
    assert len(loader) == 4 and [b[0].shape[0] for b in first] == [16, 16, 16, 2]
    for run in (second, third):
        for (xa, ya, ia), (xb, yb, ib) in zip(first, run):
            assert torch.equal(xa, xb) and torch.equal(ia, ib) and torch.equal(ya, yb)
    images = torch.cat([b[0] for b in first])
    assert torch.equal(torch.cat([b[2] for b in first]), torch.arange(50))
    assert torch.equal(torch.cat([b[1] for b in first]), y)
    expected = torch.stack([TF.normalize(img.float() / 255, list(mean), list(std)) for img in x])
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)


def test_channels_last_and_dtype():
    x, y = _toy(20)
    for train in (True, False):
        loader = DeviceLoader(x, y, batch_size=8, device="cpu", mean=CIFAR100["mean"], std=CIFAR100["std"],
                              train=train, channels_last=True, dtype=torch.bfloat16)
        images, _, _ = next(iter(loader))
        assert images.dtype == torch.bfloat16
        assert images.is_contiguous(memory_format=torch.channels_last)
    plain = DeviceLoader(x, y, batch_size=8, device="cpu", mean=CIFAR100["mean"], std=CIFAR100["std"], train=False)
    torch.testing.assert_close(images.float(), next(iter(plain))[0], atol=0.02, rtol=0.01)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = _toy(64)
    kw = dict(batch_size=16, mean=CIFAR100["mean"], std=CIFAR100["std"], train=True, seed=2)
    cpu, gpu = DeviceLoader(x, y, device="cpu", **kw), DeviceLoader(x, y, device="cuda", **kw)
    cpu.set_epoch(3)
    gpu.set_epoch(3)
    for (xc, yc, ic), (xg, yg, ig) in zip(cpu, gpu):
        assert xg.is_cuda and yg.is_cuda and ig.is_cuda
        assert torch.equal(ic, ig.cpu()) and torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xc, xg.cpu(), atol=1e-6, rtol=0)


def test_make_loaders_synthetic(synth):
    train, test, num_classes = make_loaders("synthetic-cifar10", batch_size=128, device="cpu", seed=0,
                                            test_batch_size=250, subset={"train_per_class": 30})
    assert num_classes == 10 and train.num_samples == 300 and test.num_samples == 1000
    assert train.train and not test.train and len(test) == 4
    images, labels, indices = next(iter(train))
    assert images.shape == (128, 3, 32, 32) and torch.equal(labels, train.labels[indices])
    # the old keyword of the harness is an alias of subset
    train2, _, _ = make_loaders("synthetic-cifar10", batch_size=128, device="cpu", seed=0,
                                synthetic={"train_per_class": 30})
    assert torch.equal(train2.images, train.images)


# -------------------------------------------------------------------------------- real datasets
def test_missing_cifar_without_network_is_one_line(empty_root, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)  # what torchvision's downloader calls
    for name in ("cifar100", "cifar10"):
        with pytest.raises(DatasetUnavailable) as exc:
            load_split(name, True)
        msg = str(exc.value)
        assert "\n" not in msg
        assert "missing" in msg and "could not be downloaded" in msg
        assert str(empty_root / name) in msg and "KDBENCH_DATA" in msg
        assert "PRESET=smoke (synthetic-cifar100)" in msg
        assert exc.value.__cause__ is None and exc.value.__suppress_context__  # no chained traceback
    assert issubclass(DatasetUnavailable, RuntimeError)
    with pytest.raises(DatasetUnavailable):
        make_loaders("cifar100", batch_size=8, device="cpu", seed=0)


def test_missing_cifar_download_disabled_or_corrupt(empty_root, monkeypatch):
    with pytest.raises(DatasetUnavailable, match="KDBENCH_DATA"):
        load_split("cifar10", False, download=False)

    def corrupt(*args, **kwargs):
        raise RuntimeError("File not found or corrupted.")  # torchvision's md5 failure
    monkeypatch.setattr(cifar, "download_url", corrupt)
    with pytest.raises(DatasetUnavailable, match="corrupted"):
        load_split("cifar100", True)


def test_real_download_path_end_to_end(empty_root, monkeypatch):
    """A (tiny, fake) official archive goes through download -> extract -> md5 check -> our reader."""
    src_dir = empty_root / "src"
    written = _handmade_cifar100(src_dir, 5)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        tar.add(src_dir / "cifar-100-python", arcname="cifar-100-python")
    blob = archive.getvalue()
    files = {f: _md5(src_dir / "cifar-100-python" / f) for f in ("train", "test", "meta")}
    real = cifar.source("cifar100")
    monkeypatch.setitem(cifar.SOURCES, "cifar100", {**real, "md5": hashlib.md5(blob).hexdigest(), "files": files})
    calls = []

    def fake_download(url, root, filename, md5):
        calls.append(url)
        assert url == real["url"] and hashlib.md5(blob).hexdigest() == md5
        Path(root, filename).write_bytes(blob)
    monkeypatch.setattr(cifar, "download_url", fake_download)
    images, labels = load_split("cifar100", False)
    assert torch.equal(images.reshape(5, -1), torch.from_numpy(written["test"][0]))
    assert labels.tolist() == written["test"][1]
    folder = empty_root / "cifar100"
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-100-python"]  # archive and temp removed
    load_split("cifar100", True)
    assert len(calls) == 1  # present and verified: no second download
    # subset of a real dataset: the first n of every class in file order
    images, labels = load_split("cifar100", True, subset={"train_per_class": 1})
    first = {}
    for i, c in enumerate(written["train"][1]):
        first.setdefault(c, i)
    assert torch.equal(images.reshape(len(first), -1), torch.from_numpy(written["train"][0][sorted(first.values())]))


def test_imagenet_missing_is_one_line(empty_root):
    with pytest.raises(DatasetUnavailable) as exc:
        imagenet_folder()
    msg = str(exc.value)
    assert "\n" not in msg and str(empty_root / "imagenet") in msg and "cannot be downloaded" in msg
    with pytest.raises(DatasetUnavailable):
        make_loaders("imagenet", batch_size=8, device="cpu", seed=0)
    with pytest.raises(ValueError):
        load_split("imagenet", True)


def test_same_class_pairs_follow_each_anchor_with_a_random_sample_of_its_class():
    """CS-KD's PairBatchSampler: anchors as a plain loader gives them, then one partner per anchor drawn
    uniformly within the anchor's class and augmented on its own."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (60, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(60) % 3  # 3 classes of 20
    kw = dict(batch_size=8, device="cpu", mean=CIFAR100["mean"], std=CIFAR100["std"], train=True, seed=5)
    plain, paired = DeviceLoader(x, y, **kw), DeviceLoader(x, y, same_class_pairs=True, **kw)
    partners_seen = []
    for (px, py, pi, pv), (ax, ay, ai, av) in zip(plain.batches(), paired.batches()):
        b = len(pi)
        assert ax.shape[0] == 2 * b and torch.equal(ax[:b], px) and torch.equal(ai[:b], pi)
        assert torch.equal(ay[b:], ay[:b])  # every partner has its anchor's class
        assert torch.equal(ay, y[ai]) and av.shape == (2 * b,)
        partners_seen.append(ai[b:])
        # the partner is the crop the view id names: recompute it from the padded image
        k = 2 * paired.padding + 1
        for j in range(b, 2 * b):
            v = int(av[j])
            flip, top, left = v // (k * k), (v % (k * k)) // k, v % k
            ref = _reference(x[ai[j]], top, left, bool(flip), CIFAR100["mean"], CIFAR100["std"])
            torch.testing.assert_close(ax[j], ref)
    partners = torch.cat(partners_seen)
    assert len(partners) == 60 and len(set(partners.tolist())) > 25  # drawn, not a permutation of anchors
    many = torch.cat([paired._same_class(torch.zeros(3000, dtype=torch.long), torch.Generator().manual_seed(1))])
    counts = torch.bincount(many, minlength=60)
    assert counts[y != 0].sum() == 0 and counts[y == 0].min() > 100  # uniform over the 20 of class 0
    paired.set_epoch(2)
    assert not torch.equal(next(paired.batches())[2], next(iter(DeviceLoader(x, y, same_class_pairs=True, **kw)
                                                                  .batches()))[2])
