"""One run over several processes (gloo on CPU): sharded epochs, averaged gradients, one record."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kdbench import distributed
from kdbench.data.loader import DeviceLoader


def test_shards_partition_each_epoch_like_the_single_process_order():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (21, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(21)
    kw = dict(batch_size=4, device="cpu", mean=(0.5,) * 3, std=(0.25,) * 3, train=True, seed=7)
    single = DeviceLoader(x, y, **kw)
    single.set_epoch(2)
    order = torch.cat([i for _, _, i, _ in single.batches()])
    shards = []
    for r in range(2):
        loader = DeviceLoader(x, y, shard=(r, 2), batch_size=2, **{k: v for k, v in kw.items() if k != "batch_size"})
        loader.set_epoch(2)
        shards.append(torch.cat([i for _, _, i, _ in loader.batches()]))
        assert len(loader) == 5  # 10 samples each: one of the 21 is dropped this epoch
    assert torch.equal(shards[0], order[0:20:2]) and torch.equal(shards[1], order[1:20:2])
    # step k of the two processes together is the single process's k-th batch of 4 (as a set)
    assert set(shards[0][:2].tolist()) | set(shards[1][:2].tolist()) == set(order[:4].tolist())


def _worker(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    torch.nn.functional.cross_entropy(model(x[rank::world]), y[rank::world]).backward()
    distributed.average_gradients(model.parameters())
    if rank == 0:
        torch.save([p.grad for p in model.parameters()], out)
    dist.destroy_process_group()


def test_averaged_gradients_equal_the_full_batch_gradient(tmp_path):
    out = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for got, want in zip(torch.load(out), [p.grad for p in model.parameters()]):
        torch.testing.assert_close(got, want)


def test_torchrun_two_processes_write_one_record(sandbox):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "kdbench", "reproduce", "kd", "--preset", "smoke", "--latency-iters", "2",
           "--set", "train.epochs=2", "--set", "teacher_train.epochs=1", "--set", "data_subset.train_per_class=3",
           "--set", "data_subset.test_per_class=2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    records = list((sandbox / "results").rglob("seed0.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["world_size"] == 2 and record["config"]["train"]["batch_size"] == 64
    assert done.stdout.count("best top1") == 1  # only process 0 reports


def test_torchrun_trains_a_chain_once_and_every_stage_writes_one_record(sandbox):
    """TAKD's smoke chain (teacher -> assistant -> student) on two processes: every upstream stage is
    trained once, by both processes together, and written by process 0 only; the downstream runs
    wait for the weights (a barrier) and name the exact file they used."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519",
           "-m", "kdbench", "reproduce", "takd", "--preset", "smoke", "--latency-iters", "2",
           "--set", "train.epochs=1", "--set", "data_subset.train_per_class=3", "--set", "data_subset.test_per_class=2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    records = {p.parent.name: json.loads(p.read_text()) for p in (sandbox / "results").rglob("seed0.json")}
    assert set(records) == {"resnet20", "resnet20-resnet14", "resnet20-resnet14-resnet8"}
    assert all(r["world_size"] == 2 for r in records.values())
    assert done.stdout.count("has no completed run of this config: training it") == 2  # process 0 only
    student = records["resnet20-resnet14-resnet8"]
    teacher_file = student["teacher_info"]["path"]
    assert teacher_file.endswith("student-main-best.pt") and "resnet20-resnet14" in teacher_file
    assert student["teacher_info"]["sha256"] == hashlib.sha256(Path(teacher_file).read_bytes()).hexdigest()
