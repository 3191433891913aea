"""Published teachers: download, checksum, official layout, weights_only + strict loading."""
import io
import tarfile

import pytest
import torch

from kdbench import teachers
from kdbench.errors import Unavailable
from kdbench.models import create_model


def official_archive(path, model):
    """A tar in the layout of the released archive, holding an official-style checkpoint."""
    buf = io.BytesIO()
    torch.save({"epoch": 240, "model": model.state_dict(), "accuracy": torch.tensor(71.5),
                "optimizer": {"state": {}, "param_groups": [{"lr": 5e-5, "params": [0]}]}}, buf)
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))


def test_published_teacher_download_verify_and_strict_load(sandbox, monkeypatch):
    torch.manual_seed(0)
    original = create_model("resnet8")
    archive = sandbox / "remote.tar"
    official_archive(archive, original)
    monkeypatch.setattr(teachers, "PUBLISHED_URL", archive.as_uri())
    monkeypatch.setitem(teachers.PUBLISHED_SHA256, "cifar_teachers.tar", teachers.sha256(archive))
    model, info = teachers.load_published("resnet8", 100, torch.device("cpu"))
    x = torch.randn(2, 3, 32, 32)
    original.eval(), model.eval()
    torch.testing.assert_close(model(x), original(x))
    assert info["reported_top1"] == pytest.approx(71.5) and len(info["sha256"]) == 64
    assert info["path"].endswith("resnet8_vanilla/ckpt_epoch_240.pth")


def test_published_teacher_checksum_mismatch(sandbox, monkeypatch):
    archive = sandbox / "remote.tar"
    official_archive(archive, create_model("resnet8"))
    monkeypatch.setattr(teachers, "PUBLISHED_URL", archive.as_uri())
    monkeypatch.setitem(teachers.PUBLISHED_SHA256, "cifar_teachers.tar", "0" * 64)
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        teachers.published_checkpoint("resnet8")


def test_missing_teacher_without_network_is_one_line(sandbox, monkeypatch):
    monkeypatch.setattr(teachers, "PUBLISHED_URL", (sandbox / "nowhere.tar").as_uri())
    with pytest.raises(Unavailable) as err:
        teachers.published_checkpoint("resnet32x4")
    msg = str(err.value)
    assert "\n" not in msg and "resnet32x4_vanilla/ckpt_epoch_240.pth" in msg and "KDBENCH_DATA" in msg


def test_make_teachers_installs_where_the_published_loader_looks_first(sandbox, capsys):
    from kdbench.cli import main
    argv = ["teachers", "resnet14", "--preset", "smoke", "--set", "train.epochs=1",
            "--set", "data_subset.train_per_class=4"]
    assert main(argv) == 0
    assert "installed" in capsys.readouterr().out
    path = teachers.published_checkpoint("resnet14")  # no download attempted: the local file wins
    assert path == sandbox / "data/teachers/local/resnet14_vanilla/ckpt_epoch_240.pth"
    model, info = teachers.load_published("resnet14", 100, torch.device("cpu"))
    assert info["path"] == str(path) and 0.0 <= info["reported_top1"] <= 100.0
