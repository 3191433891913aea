"""Recorded ``kdbench bench`` measurements (``results/bench/``) and the performance page
(``leaderboard/performance.md``): measured throughput of kdbench's pipeline, of the official
pipeline, the teacher-logit cache's effect, and projections of whole runs from those measurements.

Projections are labelled as such: a run's MACs (teacher forward + 3 x student forward per training
image, :func:`kdbench.sweep.run_macs`) divided by the MAC rate a bench record measured, in hours *of
the device that was measured*. No GPU figure is written without a GPU measurement.
"""
from __future__ import annotations

import time
from pathlib import Path

from . import results
from .checkpoint import atomic_write_json
from .profiles import slug


def bench_dir(root: Path | None = None) -> Path:
    return Path(root or results.results_root()) / "bench"


def record_bench(out: dict, root: Path | None = None) -> Path:
    record = {**out, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **results.environment()}
    path = bench_dir(root) / f"{slug(out['device'])}-{out['pair']}-b{out['batch_size']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, path)
    return path


def load_bench(root: Path | None = None) -> list[dict]:
    return [results.read_json(p, "bench record") for p in sorted(bench_dir(root).glob("*.json"))]


def _f(v, nd=1):
    return "–" if v is None else f"{v:.{nd}f}"


def render(records: list[dict]) -> str:
    from .registry import get_paper
    from .reproduce import plan
    from .sweep import model_macs, run_macs

    lines = ["# Performance", "",
             "Measured with `kdbench bench` (`--record`), one row per device and pair. *kdbench*: device-resident "
             "data and augmentation, precision as the paper preset resolves it. *official pipeline*: torchvision "
             "dataset, PIL transforms in DataLoader workers, fp32 NCHW, the same models and loss. *cache, steady "
             "state*: every view's teacher logits already cached (no teacher forward); *cache, 240 epochs*: a "
             "whole run including filling the cache (~125 views per image).", "",
             "| device | pair | batch | threads | precision | kdbench img/s | official pipeline img/s (workers) | "
             "ratio | cache, steady state img/s | cache, 240 epochs img/s | ratio with cache | commit | measured |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        lines.append(
            f"| {r['device']} | {r['pair']} | {r['batch_size']} | {r.get('threads', '–')} | {r['precision']} | "
            f"{_f(r['kdbench_img_s'])} | {_f(r.get('reference_img_s'))} ({r.get('reference_workers', '–')}) | "
            f"{_f(r.get('ratio'), 2)} | {_f(r.get('kdbench_cached_img_s'))} | "
            f"{_f(r.get('kdbench_cached_240_epochs_img_s'))} | {_f(r.get('ratio_cached_240_epochs'), 2)} | "
            f"`{r.get('git_commit', '')[:8]}` | {r.get('measured_at', '')} |")
    if not records:
        lines.append("| – | no bench recorded yet (`kdbench bench --record`) | | | | | | | | | | | |")
    dkd = get_paper("dkd")
    table = plan(dkd, "paper", dkd.pairs("paper"), list(range(5)), {})
    table_macs = sum(run_macs(cfg) for cfg in table)
    lines += ["", "## Projections from these measurements", "",
              f"The DKD CIFAR-100 table (11 pairs x 5 seeds, 240 epochs each) is {table_macs / 1e15:.0f} PMAC of "
              "training compute (teacher forward + 3 x student forward per image). Hours below are that compute "
              "divided by the MAC rate each bench row measured, on *that* device; evaluation and connectors are "
              "excluded. For a GPU, run `kdbench bench --record` on it and `kdbench sweep dkd --seeds 5 --dry-run "
              "--rate-from <its bench json>`.", "",
              "| device | measured on pair | one run of that pair, 240 epochs (h) | with the cache (h) | "
              "DKD table (h) | DKD table with the cache (h) |", "| --- | --- | --- | --- | --- | --- |"]
    for r in records:
        teacher, student = r["pair"].split("-", 1)
        rate = r["kdbench_img_s"] * (model_macs(teacher, 32, 100) + 3 * model_macs(student, 32, 100))
        one = 50_000 * 240 / r["kdbench_img_s"] / 3600
        cached = r.get("kdbench_cached_240_epochs_img_s")
        speedup = cached / r["kdbench_img_s"] if cached else None
        lines.append(f"| {r['device']} | {r['pair']} | {one:.1f} | {_f(one / speedup if speedup else None)} | "
                     f"{table_macs / rate / 3600:.0f} | "
                     f"{_f(table_macs / rate / 3600 / speedup if speedup else None, 0)} |")
    lines += ["", "The cache column of the table projection applies the speed-up measured on the bench pair to every "
              "pair (the teacher's share of a step differs between pairs)."]
    return "\n".join(lines) + "\n"
