"""Reliability of what kdbench writes and loads, each promise proved by injecting its fault:
atomic writes (a write failing or killed halfway, writers in parallel), readers of damaged records,
trusted loading of checkpoints and datasets (truncated, bit-flipped, another architecture, another
number of classes, not a checkpoint, replaced after the fact) and a disk that fills up in training."""
import errno
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdbench import checkpoint, results, teachers, upstream
from kdbench.config import TrainConfig, UpstreamRun, resolve
from kdbench.data.loader import DeviceLoader
from kdbench.distiller import Vanilla
from kdbench.errors import CheckpointError, DiskFull, UsageError
from kdbench.models import create_model
from kdbench.registry import get_paper
from kdbench.train import fit

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- helpers
class FailingFile(io.FileIO):
    """A file whose writes fail with ``error`` once ``limit`` bytes are on disk: a disk that fills up,
    or an I/O error, in the middle of a file. ``failed`` gets the bytes on disk when it failed."""

    def __init__(self, fd, limit, error, failed: list):
        super().__init__(fd, "wb")
        self.limit, self.error, self.failed, self.hit = limit, error, failed, False

    def write(self, data):
        room = self.limit - self.tell()
        if room <= 0:
            if not self.hit:  # the writer may try again (e.g. when the file is closed): one fault
                self.failed.append(self.tell())
                self.hit = True
            raise OSError(self.error, os.strerror(self.error))
        return super().write(bytes(memoryview(data)[:room]))


@pytest.fixture
def failing_writes(monkeypatch):
    """``fail(nth, limit, error)``: the ``nth`` file kdbench.checkpoint writes from now on fails after
    ``limit`` bytes with ``error``. Returns the list of bytes on disk at each failure."""
    def fail(nth=1, limit=100, error=errno.ENOSPC):
        opened, failed = [], []
        fake_os = types.ModuleType("os")
        fake_os.__dict__.update(os.__dict__)

        def fdopen(fd, mode="r", *args, **kwargs):
            opened.append(fd)
            if len(opened) == nth:
                return io.BufferedWriter(FailingFile(fd, limit, error, failed))
            return os.fdopen(fd, mode, *args, **kwargs)
        fake_os.fdopen = fdopen
        monkeypatch.setattr(checkpoint, "os", fake_os)
        return failed
    return fail


def temp_files(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if p.name.endswith(".tmp")]


def minimal_record(seed=0, **extra) -> dict:
    """A record with every required key (enough for results.write / load_all)."""
    return {**{k: 0 for k in results.REQUIRED}, "paper": "dkd", "preset": "paper",
            "pair": "resnet32x4-resnet8x4", "seed": seed, "config": {}, **extra}


def flip_middle_of_largest_tensor(path: Path) -> None:
    """Flip one bit in the middle of the data of the largest tensor of a zip-format checkpoint (the
    flip lands in weights, not in zip padding that nothing reads)."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = (int.from_bytes(raw[info.header_offset + k:info.header_offset + k + 2], "little")
                           for k in (26, 28))
    raw[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def one_line(exc) -> str:
    msg = str(exc.value if hasattr(exc, "value") else exc)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# ------------------------------------------------------------------------- 1. atomic writes
WRITERS = {
    "json": lambda path: checkpoint.atomic_write_json({"rows": list(range(5000))}, path),
    "text": lambda path: checkpoint.atomic_write_text("| row |\n" * 5000, path),
    "checkpoint": lambda path: checkpoint.atomic_save({"model": {"w": torch.arange(5000.0)}}, path),
    "png": lambda path: _png(path),
}


def _png(path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.plot(range(100))
    checkpoint.atomic_savefig(fig, path, dpi=50)
    plt.close(fig)


@pytest.mark.parametrize("kind", WRITERS)
@pytest.mark.parametrize("old", [True, False], ids=["over an old file", "new file"])
@pytest.mark.parametrize("error", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
def test_a_write_failing_halfway_leaves_the_old_file_or_none_and_no_temp_file(tmp_path, failing_writes, kind,
                                                                                old, error):
    path = tmp_path / f"out.{ {'checkpoint': 'pt', 'text': 'md'}.get(kind, kind) }"
    if old:
        WRITERS[kind](path)
    before = path.read_bytes() if old else None
    failed = failing_writes(nth=1, limit=100, error=error)
    with pytest.raises(OSError) as exc:
        WRITERS[kind](path)
    assert failed == [100]  # the fault hit mid-file, after 100 bytes were on disk
    assert exc.value.errno == error
    if error == errno.ENOSPC:
        assert isinstance(exc.value, DiskFull) and one_line(exc) == f"no space left on device while writing {path}"
    assert (path.read_bytes() if path.exists() else None) == before
    assert [p.name for p in tmp_path.iterdir()] == ([path.name] if old else [])  # no temp file left


KILLED_WRITER = r"""
import io, os, sys, time, types
import torch
import kdbench
from kdbench import checkpoint, results

assert kdbench.__file__.startswith(sys.argv[3]), kdbench.__file__


class Stalling(io.FileIO):
    # writes the first 4096 bytes, tells the parent, then waits to be killed
    def write(self, data):
        if self.tell() >= 4096:
            print("half written", flush=True)
            time.sleep(600)
        return super().write(bytes(memoryview(data)[:4096 - self.tell()]))


fake_os = types.ModuleType("os")
fake_os.__dict__.update(os.__dict__)
fake_os.fdopen = lambda fd, mode="r": io.BufferedWriter(Stalling(fd, "wb"))
checkpoint.os = fake_os
kind, target = sys.argv[1], sys.argv[2]
if kind == "checkpoint":
    checkpoint.atomic_save({"model": {"w": torch.arange(1_000_000.0)}}, target)
else:
    record = {k: 0 for k in results.REQUIRED}
    record.update(paper="dkd", preset="paper", pair="resnet32x4-resnet8x4", seed=0, best_top1=99.0,
                  config={}, history=list(range(200_000)))
    results.write(record, target)
"""


@pytest.mark.parametrize("kind", ["record", "checkpoint"])
def test_a_writer_killed_mid_write_leaves_the_old_file_intact(tmp_path, kind):
    if kind == "record":
        target = tmp_path / "results"
        path = results.write(minimal_record(best_top1=42.0), target)
    else:
        target = path = tmp_path / "checkpoint-main.pt"
        checkpoint.atomic_save({"model": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, kind, str(target), str(ROOT)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        line = proc.stdout.readline()  # returns once the child is stalled halfway through its write
        assert line == b"half written\n", proc.stderr.read().decode()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    (tmp,) = temp_files(tmp_path)  # a killed process cannot clean up: its temp file stays ...
    assert tmp.name.startswith(f".{path.name}.") and tmp.stat().st_size == 4096
    if kind == "record":  # ... and no reader takes it for a record
        (rec,) = results.load_all(target)
        assert rec["best_top1"] == 42.0 and rec["_path"] == str(path)
    else:
        assert torch.equal(checkpoint.load(path)["model"]["w"], torch.ones(3))


def big_record(seed: int, writer: int) -> dict:
    """A record large enough (~0.5 MB) that concurrent writes overlap; its content names its writer."""
    return minimal_record(seed=seed, writer=writer, history=[writer] * 100_000)


def test_parallel_writers_lose_no_record_and_leave_one_complete_winner(tmp_path):
    root = tmp_path / "results"
    workers, per_worker, shared_seed = 4, 5, 999
    distinct = [(big_record(w * per_worker + i, w), root) for w in range(workers) for i in range(per_worker)]
    same = [(big_record(shared_seed, w), root) for w in range(workers) for _ in range(per_worker)]
    tasks = [t for pair in zip(distinct, same) for t in pair]  # distinct and shared writes interleaved
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)  # every worker is up before the first write: the writes overlap
    with ctx.Pool(workers, initializer=barrier.wait) as pool:
        paths = pool.starmap(results.write, tasks, chunksize=1)
    assert len(set(paths)) == len(distinct) + 1
    records = {r["seed"]: r for r in results.load_all(root)}  # every file is whole, valid JSON
    assert len(records) == len(distinct) + 1
    for rec, _ in distinct:
        assert records[rec["seed"]]["writer"] == rec["writer"]
        assert records[rec["seed"]]["history"] == rec["history"]
    winner = records[shared_seed]
    assert winner["writer"] in range(workers) and winner["history"] == [winner["writer"]] * 100_000
    assert temp_files(root) == []


# -------------------------------------------------------------- 1c. readers of damaged records
@pytest.mark.parametrize("content, needle", [
    ("{\"paper\": \"dkd\", \"pre", "is unreadable (Unterminated string"),  # a partial file
    ("", "is unreadable (Expecting value"),
    ("[1, 2]", "holds a JSON list, not an object"),
    (b"\xff\xfe\x00", "is unreadable ("),
    (json.dumps({**minimal_record(), "schema": 0}), "has schema 0; this kdbench reads schema 1"),
    (json.dumps({"schema": 1, "paper": "dkd"}), "lacks ['method', 'dataset'"),
])
def test_a_damaged_record_is_one_line_naming_it_and_a_temp_file_is_ignored(tmp_path, content, needle):
    root = tmp_path / "results"
    good = results.write(minimal_record(seed=0), root)
    (good.parent / ".seed0.json.x1y2.tmp").write_text('{"schema": 1, "pa')  # an interrupted write
    assert [r["seed"] for r in results.load_all(root)] == [0]
    bad = good.with_name("seed1.json")
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UsageError) as exc:
        results.load_all(root)
    assert needle in one_line(exc) and str(bad) in str(exc.value)


def test_check_and_leaderboard_refuse_a_damaged_record_and_write_nothing(sandbox, capsys):
    from kdbench.cli import main
    path = results.write(minimal_record(), sandbox / "results")
    path.write_text(path.read_text()[:50])  # truncated
    out = sandbox / "lb"
    for argv in (["check"], ["leaderboard", "--out", str(out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"kdbench: error: results record {path} is unreadable") and err.count("\n") == 1
    assert not out.exists()


# -------------------------------------------------------------------------- 2. trusted loading
def saved_state(path: Path, model=None, **extra) -> dict:
    torch.manual_seed(0)
    state = (model or create_model("resnet8")).state_dict()
    torch.save({"model": state, **extra}, path)
    return state


def test_a_bit_flip_that_torch_loads_silently_is_caught_by_the_crc_check(tmp_path):
    path = tmp_path / "ckpt.pth"
    state = saved_state(path)
    flip_middle_of_largest_tensor(path)
    silently = torch.load(path, weights_only=True)["model"]  # torch itself does not notice ...
    assert any(not torch.equal(silently[k], v) for k, v in state.items())
    with pytest.raises(CheckpointError) as exc:  # ... kdbench does
        checkpoint.load(path)
    assert one_line(exc).startswith(f"checkpoint {path} is damaged: its member ") and "CRC-32" in exc.value.args[0]


@pytest.mark.parametrize("damage, needle", [
    ("truncated", "is truncated: its zip archive lacks its end"),
    ("text", "is unreadable ("),
    ("empty", "is unreadable (EOFError)"),
    ("pickle", "is unreadable (UnpicklingError: Weights only load failed"),
    ("missing", "is missing"),
])
def test_an_unreadable_checkpoint_is_one_line_naming_it(tmp_path, damage, needle):
    path = tmp_path / "ckpt.pth"
    saved_state(path)
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[:len(raw) // 2])
    elif damage == "text":
        path.write_text("this is not a checkpoint\n")
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "pickle":  # arbitrary objects: weights-only loading refuses to run them
        torch.save({"model": types.SimpleNamespace(x=1)}, path)
    else:
        path.unlink()
    with pytest.raises(CheckpointError) as exc:
        checkpoint.load(path)
    assert one_line(exc).startswith(f"checkpoint {path} ") and needle in str(exc.value)


@pytest.mark.parametrize("saved, into, needle", [
    (lambda: create_model("resnet8"), lambda: create_model("resnet20"), "missing key(s) (layer1.1.conv1.weight"),
    (lambda: create_model("resnet8", num_classes=10), lambda: create_model("resnet8", num_classes=100),
     "classifier fc has 10 outputs, the model expects 100: wrong number of classes"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 10)),
     lambda: nn.Sequential(nn.Conv2d(3, 4, 5), nn.Flatten(), nn.Linear(4, 10)),
     "0.weight has shape (4, 3, 3, 3), the model expects (4, 3, 5, 5): it holds another architecture"),
], ids=["resnet8 into resnet20", "10 classes into 100", "same keys, other shapes"])
def test_a_checkpoint_of_another_model_is_one_line_saying_what_differs(tmp_path, saved, into, needle):
    path = tmp_path / "ckpt.pth"
    saved_state(path, saved())
    model = into()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as exc:
        checkpoint.load_state_strict(model, checkpoint.section(checkpoint.load(path), "model", path), path)
    assert one_line(exc).startswith(f"checkpoint {path} does not fit ") and needle in str(exc.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded


def test_a_checkpoint_without_a_model_entry_is_one_line(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save(create_model("resnet8").state_dict(), path)  # a bare state dict
    with pytest.raises(CheckpointError, match=r"holds no 'model' entry") as exc:
        checkpoint.section(checkpoint.load(path), "model", path)
    one_line(exc)


def published_archive(path: Path, legacy: bool, seed: int = 0) -> dict:
    """The released archive's layout with one teacher; ``legacy``: the pre-zip torch format of 2019's
    RepDistiller checkpoints, which has no CRC at all."""
    torch.manual_seed(seed)
    state = create_model("resnet8").state_dict()
    buf = io.BytesIO()
    torch.save({"model": state, "accuracy": 71.5}, buf, _use_new_zipfile_serialization=not legacy)
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))
    return state


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy format", "zip format"])
def test_published_teachers_are_trusted_on_first_use_and_checked_on_every_load(sandbox, monkeypatch, legacy):
    archive = sandbox / "remote.tar"
    published_archive(archive, legacy)
    monkeypatch.setattr(teachers, "PUBLISHED_URL", archive.as_uri())
    assert teachers.PUBLISHED_SHA256["cifar_teachers.tar"] is None  # no digest pinned: trust on first use
    model, info = teachers.load_published("resnet8", 100, torch.device("cpu"))
    manifest = json.loads(teachers.manifest_path().read_text())
    key = "cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth"
    assert manifest == {"archives": {"cifar_teachers.tar": teachers.sha256(archive)},
                        "files": {key: info["sha256"]}}
    path = Path(info["path"])
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10  # one bit in the middle of the file
    path.write_bytes(bytes(raw))
    if legacy:  # the legacy format loads a flipped weight without a word: only the digest notices
        flipped = torch.load(path, weights_only=True)["model"]
        assert any(not torch.equal(flipped[k], v) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError) as exc:
        teachers.load_published("resnet8", 100, torch.device("cpu"))
    assert one_line(exc) == (f"teacher checkpoint {path} changed since it was obtained: sha256 "
                             f"{teachers.sha256(path)}, recorded {info['sha256']} in {teachers.manifest_path()}; "
                             "delete it to obtain it again")
    path.unlink()  # as the message says: it is extracted again from the (verified) archive
    _, info2 = teachers.load_published("resnet8", 100, torch.device("cpu"))
    assert info2["sha256"] == info["sha256"]


def test_a_different_archive_than_the_first_download_is_refused(sandbox, monkeypatch):
    archive = sandbox / "remote.tar"
    published_archive(archive, legacy=False)
    monkeypatch.setattr(teachers, "PUBLISHED_URL", archive.as_uri())
    teachers.load_published("resnet8", 100, torch.device("cpu"))
    local = teachers.teacher_dir() / "cifar_teachers.tar"
    published_archive(local, legacy=False, seed=1)  # replaced by other weights
    shutil.rmtree(teachers.teacher_dir() / "cifar_teachers")  # so that it is extracted again
    with pytest.raises(CheckpointError, match="is not the archive first downloaded") as exc:
        teachers.published_checkpoint("resnet8")
    one_line(exc)
    assert not (teachers.teacher_dir() / "cifar_teachers").exists()  # nothing extracted from it


def test_a_hand_placed_teacher_is_recorded_on_first_load_and_checked_afterwards(sandbox):
    path = teachers.teacher_dir() / "cifar_teachers" / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True)
    saved_state(path, accuracy=70.0)
    _, info = teachers.load_published("resnet8", 100, torch.device("cpu"))
    assert json.loads(teachers.manifest_path().read_text())["files"] == {
        "cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth": info["sha256"]}
    saved_state(path, create_model("resnet8"), accuracy=99.0)  # another file, valid in itself
    with pytest.raises(CheckpointError, match="changed since it was obtained"):
        teachers.load_published("resnet8", 100, torch.device("cpu"))


def test_a_read_only_teachers_folder_is_used_without_a_manifest(sandbox, monkeypatch):
    path = teachers.teacher_dir() / "cifar_teachers" / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True)
    state = saved_state(path, accuracy=70.0)

    def read_only(obj, target):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))
    monkeypatch.setattr(checkpoint, "atomic_write_json", read_only)
    with pytest.warns(UserWarning, match="teacher digests not recorded in .*Read-only file system"):
        model, _ = teachers.load_published("resnet8", 100, torch.device("cpu"))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_published_teacher_of_another_architecture_or_class_count_is_one_line(sandbox):
    path = teachers.teacher_dir() / "cifar_teachers" / "resnet20_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True)
    saved_state(path, create_model("resnet8"))  # a resnet8 under resnet20's name
    with pytest.raises(CheckpointError, match=r"does not fit .*missing key\(s\)") as exc:
        teachers.load_published("resnet20", 100, torch.device("cpu"))
    one_line(exc)
    path = teachers.teacher_dir() / "cifar_teachers" / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True)
    saved_state(path, create_model("resnet8", num_classes=10))
    with pytest.raises(CheckpointError, match="10 outputs, the model expects 100: wrong number of classes"):
        teachers.load_published("resnet8", 100, torch.device("cpu"))
    assert not teachers.manifest_path().exists()  # a teacher that never loaded is never trusted


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned sha256", "trust on first use"])
def test_a_paper_teacher_replaced_after_download_is_refused(sandbox, pinned):
    remote = sandbox / "remote.pth"
    saved_state(remote)
    spec = {"url": remote.as_uri(), "file": "paper/teacher.pth", "state_key": "model",
            **({"sha256": teachers.sha256(remote)} if pinned else {})}
    _, info = teachers.load_paper_checkpoint("resnet8", spec, 100, torch.device("cpu"))
    path = Path(info["path"])
    saved_state(path, create_model("resnet8", num_classes=100), extra=1)  # replaced by another file
    with pytest.raises(CheckpointError, match="checksum mismatch" if pinned else "changed since it was obtained"):
        teachers.load_paper_checkpoint("resnet8", spec, 100, torch.device("cpu"))


def upstream_run(sandbox, weights: dict) -> tuple[Path, UpstreamRun, dict]:
    """A completed upstream run in a folder of its own, with its completion note."""
    paper = get_paper("takd")
    cfg = resolve(paper.id, paper.spec, "smoke", "resnet20", 0)
    run_dir = sandbox / "runs" / "up"
    checkpoint.atomic_save({"model": weights}, run_dir / "checkpoint-main.pt")
    record = results.write({**minimal_record(), "best_top1": 1.0, "last_top1": 1.0}, sandbox / "results")
    upstream.mark_complete(run_dir, cfg, {"best_top1": 1.0, "last_top1": 1.0}, record)
    up = UpstreamRun("resnet20", "last", cfg)
    return run_dir, up, upstream.completed(run_dir, cfg)


def test_upstream_weights_replaced_after_the_run_are_refused(sandbox):
    student = {f"student.{k}": v for k, v in create_model("resnet20").state_dict().items()}
    run_dir, up, note = upstream_run(sandbox, student)
    assert note["weights"] == {"checkpoint-main.pt": teachers.sha256(run_dir / "checkpoint-main.pt")}
    state, info = upstream.student_weights(run_dir, up, note)
    assert info["sha256"] == note["weights"]["checkpoint-main.pt"] and set(state) == {
        k[len("student."):] for k in student}
    torch.manual_seed(1)
    other = {f"student.{k}": v for k, v in create_model("resnet20").state_dict().items()}
    checkpoint.atomic_save({"model": other}, run_dir / "checkpoint-main.pt")  # valid, but not the run's
    with pytest.raises(CheckpointError) as exc:
        upstream.student_weights(run_dir, up, note)
    assert one_line(exc).startswith(f"upstream run resnet20: {run_dir / 'checkpoint-main.pt'} was replaced after "
                                    "the run completed (sha256 ") and f"delete {run_dir} to retrain it" in str(exc.value)
    note.pop("weights")  # a note written before digests were kept: loads as before
    assert upstream.student_weights(run_dir, up, note)[1]["sha256"] == teachers.sha256(run_dir / "checkpoint-main.pt")


def test_upstream_weights_that_do_not_fit_and_a_damaged_note_are_one_line(sandbox):
    student = {f"student.{k}": v for k, v in create_model("resnet8").state_dict().items()}
    run_dir, up, note = upstream_run(sandbox, student)  # resnet8 weights where resnet20 is expected
    states = [upstream.student_weights(run_dir, up, note)]
    with pytest.raises(CheckpointError, match="does not fit ResNet.*missing key") as exc:
        upstream.LogitEnsemble([create_model("resnet20")], [s for s, _ in states], [i["path"] for _, i in states])
    assert str(run_dir / "checkpoint-main.pt") in one_line(exc)
    (run_dir / "complete.json").write_text('{"digest": ')
    with pytest.raises(CheckpointError, match="completion note .* is unreadable") as exc:
        upstream.completed(run_dir, up.config)
    one_line(exc)


# ------------------------------------------------- datasets: md5 checked on every use, not only at download
def flip_byte(path: Path, at: float = 0.5) -> None:
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * at)] ^= 0x10
    path.write_bytes(bytes(raw))


def offline(calls):
    def download(*args, **kwargs):
        calls.append(args)  # what torchvision does when the network is down
        raise OSError("network is unreachable")
    return download


def test_a_local_cifar_file_that_no_longer_matches_its_md5_is_not_used(sandbox, monkeypatch):
    from kdbench.data import DatasetUnavailable, cifar, load_split
    folder = sandbox / "data" / "cifar100"  # placed there by hand: never downloaded here
    rng = np.random.default_rng(0)

    def split(n):
        return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.arange(n) % 100, np.arange(n) % 20, [b"x"] * n
    cifar.write_dataset(folder, "cifar100", split(4), split(2), [f"c{i}" for i in range(100)],
                        [f"g{i}" for i in range(20)])
    files = {f: md5_of(folder / "cifar-100-python" / f) for f in ("train", "test", "meta")}
    monkeypatch.setitem(cifar.SOURCES, "cifar100", {**cifar.source("cifar100"), "files": files})
    calls = []
    monkeypatch.setattr(cifar, "download_url", offline(calls))
    assert len(load_split("cifar100", True)[1]) == 4 and calls == []  # intact: used as is
    flip_byte(folder / "cifar-100-python" / "train")
    with pytest.raises(DatasetUnavailable, match="is missing from .* could not be downloaded") as exc:
        load_split("cifar100", True)
    one_line(exc)
    assert len(calls) == 1  # the damaged file was not read: kdbench tried to download it again


def test_a_local_mnist_archive_that_no_longer_matches_its_md5_is_not_used(sandbox, monkeypatch):
    from kdbench.data import DatasetUnavailable, load_split, mnist
    folder = sandbox / "data" / "mnist"  # placed there by hand: never downloaded here
    rng = np.random.default_rng(0)
    train = (rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), np.arange(6, dtype=np.uint8) % 10)
    mnist.write_dataset(folder, train, (train[0][:2], train[1][:2]))
    md5 = {p.name: md5_of(p) for p in (folder / mnist.RAW).glob("*.gz")}
    monkeypatch.setattr(mnist, "md5s", lambda: md5)
    calls = []
    monkeypatch.setattr(mnist, "download", lambda folder: calls.append(folder))  # files there: torchvision skips
    flip_byte(folder / mnist.RAW / "train-images-idx3-ubyte", at=0.9)  # an extracted file, not an archive
    images, _ = load_split("mnist", True)
    assert torch.equal(images[:, 0], torch.from_numpy(train[0])) and calls == []  # read from the verified archive
    flip_byte(folder / mnist.RAW / "train-images-idx3-ubyte.gz", at=0.9)
    with pytest.raises(DatasetUnavailable) as exc:
        load_split("mnist", True)
    assert "train-images-idx3-ubyte.gz missing or not matching its md5" in one_line(exc)
    assert f"delete {folder / mnist.RAW} to download it again" in str(exc.value)


# ------------------------------------------------------------------------------ resume of a run
# the tiny training setup of tests/test_train.py
def tiny_net(classes=10):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))


def loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (96,), generator=g)
    kw = {"batch_size": 32, "device": torch.device("cpu"), "mean": (0.5,) * 3, "std": (0.25,) * 3}
    return DeviceLoader(x, y, train=True, seed=0, **kw), DeviceLoader(x[:32], y[:32], train=False, **kw)


CFG = TrainConfig(epochs=3, batch_size=32, lr=0.1, weight_decay=5e-4, milestones=[1, 2], gamma=0.5)


def tiny_fit(run_dir, epochs=3, resume=False, classes=10):
    torch.manual_seed(0)
    model = Vanilla(tiny_net(classes))
    fit(model, *loaders(), TrainConfig(**{**CFG.__dict__, "epochs": epochs}), run_dir=run_dir, resume=resume,
        log=lambda *_: None)
    return model


@pytest.mark.parametrize("damage, needle", [
    ("another model", "is not one of this run (classifier student.5 has 10 outputs, the model expects 100"),
    ("truncated", "is truncated: its zip archive lacks its end"),
    ("bit flip", "is damaged: its member "),
])
def test_resume_from_a_damaged_or_foreign_checkpoint_is_one_line(tmp_path, damage, needle):
    tiny_fit(tmp_path, epochs=1)
    path = tmp_path / "checkpoint-main.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-200])
    elif damage == "bit flip":
        flip_middle_of_largest_tensor(path)
    with pytest.raises(CheckpointError) as exc:
        tiny_fit(tmp_path, epochs=2, resume=True, classes=100 if damage == "another model" else 10)
    assert one_line(exc).startswith(f"checkpoint {path} ") and needle in str(exc.value)


# ------------------------------------------------------------------------------- 4. full disk
def test_a_full_disk_mid_checkpoint_fails_the_run_with_the_last_good_checkpoint_intact(tmp_path, failing_writes):
    reference = tiny_fit(tmp_path / "reference", epochs=2)  # what epoch 2 leaves
    good = (tmp_path / "reference" / "checkpoint-main.pt").stat().st_size
    failed = failing_writes(nth=3, limit=good // 2)  # the disk fills halfway through epoch 3's checkpoint
    run_dir = tmp_path / "run"
    with pytest.raises(DiskFull) as exc:
        tiny_fit(run_dir, epochs=3)
    assert failed == [good // 2]
    path = run_dir / "checkpoint-main.pt"
    assert one_line(exc) == f"no space left on device while writing {path}"
    saved = checkpoint.load(path)
    assert saved["trainer"]["epoch"] == 2
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(saved["model"][key], value, rtol=0, atol=0, msg=key)
    assert temp_files(tmp_path) == []


TINY = ["--set", "data_subset.train_per_class=2", "--set", "data_subset.test_per_class=1", "--set", "train.epochs=2",
        "--latency-iters", "2"]


def test_a_full_disk_reaches_the_cli_as_one_line_and_the_run_resumes_afterwards(sandbox, capsys, monkeypatch,
                                                                                 failing_writes, one_thread_module):
    from kdbench.cli import main
    argv = ["reproduce", "vanilla", "--preset", "smoke", "--pair", "resnet8", *TINY]
    run_dir = sandbox / "runs" / "vanilla" / "smoke" / "resnet8" / "seed0"
    path = run_dir / "checkpoint-main.pt"
    failing_writes(nth=2, limit=1000)  # epoch 2's checkpoint
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == f"kdbench: error: no space left on device while writing {path}\n"
    assert checkpoint.load(path)["trainer"]["epoch"] == 1 and temp_files(sandbox) == []
    assert not (sandbox / "results").exists() and not (run_dir / "complete.json").exists()
    good = path.read_bytes()
    path.write_bytes(good[:len(good) // 2])  # and then the last checkpoint is damaged as well
    assert main([*argv, "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"kdbench: error: checkpoint {path} is truncated") and err.count("\n") == 1
    path.write_bytes(good)
    monkeypatch.setattr(checkpoint, "os", os)  # the disk has room again
    assert main([*argv, "--resume"]) == 0
    (rec,) = results.load_all(sandbox / "results")
    assert rec["epochs"] == 2 and [h["epoch"] for h in checkpoint.load(path)["trainer"]["history"]] == [1, 2]
