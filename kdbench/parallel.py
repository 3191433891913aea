"""Several runs side by side on one device.

Small CIFAR models leave a large GPU mostly idle, so ``kdbench reproduce`` runs the (pair, seed) jobs
of one command as concurrent processes on the same device (``--parallel N``; on CUDA the default is
chosen from the free memory, elsewhere 1). Each job is exactly the run ``kdbench reproduce --pair P
--seed S`` would make on its own -- its own process, seed, data order and record -- so the results are
those of separate runs; only the wall time changes. On a CPU the cores are split between the processes
(``OMP_NUM_THREADS``), so packing does not oversubscribe them.

Each child writes its log to ``runs/<paper>/<preset>/<pair>/seed<N>/stdout.log``; a failed child is
reported with the tail of that log and the others still finish.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from .config import RunConfig

# one slot per this many free device bytes, at most MAX_AUTO: a generous budget for a CIFAR run at
# batch 64 (not measured on a GPU here; --parallel N overrides it)
DEVICE_BYTES_PER_RUN = 3 << 30
MAX_AUTO = 8


def auto_parallel(device: torch.device, jobs: int) -> int:
    if device.type != "cuda" or jobs <= 1:
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(jobs, MAX_AUTO, free // DEVICE_BYTES_PER_RUN))


def child_command(cfg: RunConfig, *, device: str | None, overrides: list[str], resume: bool,
                  results_dir: str | None, latency_iters: int) -> list[str]:
    cmd = [sys.executable, "-m", "kdbench", "reproduce", cfg.paper, "--preset", cfg.preset, "--pair", cfg.pair,
           "--seed", str(cfg.seed), "--parallel", "1", "--latency-iters", str(latency_iters)]
    for item in overrides:
        cmd += ["--set", item]
    if device:
        cmd += ["--device", device]
    if resume:
        cmd.append("--resume")
    if torch.are_deterministic_algorithms_enabled():  # kdbench.determinism: children run the same way
        cmd.append("--deterministic")
    if results_dir:
        cmd += ["--results-dir", results_dir]
    return cmd


def run_side_by_side(configs: list[RunConfig], parallel: int, *, run_dir_of, device: str | None = None,
                     overrides: list[str] = (), resume: bool = False, results_dir: str | None = None,
                     latency_iters: int = 50, log=print) -> list[tuple[RunConfig, int]]:
    """Run ``configs`` as up to ``parallel`` concurrent child processes; return (config, exit code)."""
    env = dict(os.environ)
    if (device or "cpu").startswith("cpu") or not torch.cuda.is_available():
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    queue, running, finished = list(configs), [], []
    while queue or running:
        while queue and len(running) < parallel:
            cfg = queue.pop(0)
            out = Path(run_dir_of(cfg)) / "stdout.log"
            out.parent.mkdir(parents=True, exist_ok=True)
            fh = open(out, "w")
            cmd = child_command(cfg, device=device, overrides=list(overrides), resume=resume,
                                results_dir=results_dir, latency_iters=latency_iters)
            running.append((cfg, subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env), fh, out))
            log(f"started {cfg.paper}/{cfg.preset} {cfg.pair} seed {cfg.seed} (log: {out})")
        time.sleep(0.2)
        for item in list(running):
            cfg, proc, fh, out = item
            if proc.poll() is None:
                continue
            fh.close()
            running.remove(item)
            finished.append((cfg, proc.returncode))
            if proc.returncode:
                tail = out.read_text().strip().splitlines()[-5:]
                log(f"FAILED {cfg.paper}/{cfg.preset} {cfg.pair} seed {cfg.seed} (exit {proc.returncode}):\n  "
                    + "\n  ".join(tail))
            else:
                log(f"finished {cfg.paper}/{cfg.preset} {cfg.pair} seed {cfg.seed}")
    return finished
