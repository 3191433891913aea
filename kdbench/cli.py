"""``kdbench list | reproduce | sweep | leaderboard | check | bench | profile | teachers`` (the Makefile wraps these)."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from .errors import CheckpointError, DiskFull, TrainingFailed, Unavailable, UsageError


def _list(args) -> int:
    from .registry import papers
    rows = [p.summary() for p in papers().values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['paper']:<10} {r['title']} (arXiv {r['arxiv'] or '-'})")
        print(f"{'':<10} presets: {', '.join(r['presets'])}; pairs: {', '.join(r['pairs'])}")
    return 0


def _reproduce(args) -> int:
    from . import determinism, distributed, results
    if args.deterministic:  # before anything creates a CUDA context (kdbench.determinism)
        determinism.enable()
    from .config import parse_overrides
    from .parallel import auto_parallel, run_side_by_side
    from .registry import get_paper, papers
    from .reproduce import pick_device, plan, run_dir_of, run_one
    from .upstream import completed as upstream_note
    for flag, value in (("--seeds", args.seeds), ("--parallel", args.parallel), ("--latency-iters", args.latency_iters)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    seeds = _seeds(args.seed) if args.seed is not None else list(range(args.seeds))
    preset = args.preset
    if args.paper == "all":  # every paper that has this preset (CI runs all smoke presets this way)
        chosen = [p for p in papers().values() if preset in p.presets]
    else:
        chosen = [get_paper(args.paper)]
        chosen[0].preset(preset)
    overrides = parse_overrides(args.set)
    jobs = []
    for paper in chosen:
        if args.pair in (None, ""):
            pairs = [paper.default_pair(preset)]
        elif args.pair == "all":
            pairs = paper.pairs(preset)
        else:
            pairs = args.pair.split(",")
        jobs += [(paper, cfg) for cfg in plan(paper, preset, pairs, seeds, overrides)]
    if args.dry_run:
        print(json.dumps([cfg.to_dict() for _, cfg in jobs], indent=2))
        return 0
    if distributed.requested():  # under torchrun: one run over the processes, see kdbench.distributed
        device = distributed.init(args.device)
        for paper, cfg in jobs:
            run_one(paper, cfg, device=device, resume=args.resume, latency_iters=args.latency_iters,
                    results_dir=Path(args.results_dir) if args.results_dir else None,
                    log=print if distributed.is_main() else (lambda msg: None))
        return 0
    device = pick_device(args.device)
    parallel = args.parallel if args.parallel is not None else auto_parallel(device, len(jobs))
    if parallel > 1 and any(cfg.upstream() for _, cfg in jobs):
        print("runs that build on other runs (teacher_from / init_from) run one after the other, "
              "so that no upstream run is trained twice")
        parallel = 1
    if parallel > 1 and len(jobs) > 1:  # side by side on one device, each job its own process
        done = run_side_by_side([cfg for _, cfg in jobs], parallel, run_dir_of=run_dir_of, device=args.device,
                                overrides=args.set, resume=args.resume, results_dir=args.results_dir,
                                latency_iters=args.latency_iters)
        failed = [cfg for cfg, code in done if code]
        print(f"{len(done) - len(failed)} runs recorded, {len(failed)} failed")
        return 1 if failed else 0
    records, done = [], {}
    for paper, cfg in jobs:
        if cfg.digest() in done:  # already trained in this invocation as another run's upstream
            records.append(done[cfg.digest()])
            continue
        rec = run_one(paper, cfg, device=device, resume=args.resume, latency_iters=args.latency_iters,
                      results_dir=Path(args.results_dir) if args.results_dir else None)
        records.append(rec)
        done[cfg.digest()] = rec
        pending = list(cfg.upstream())
        while pending:  # every run it built on is complete now: note their records
            up = pending.pop()
            pending += up.config.upstream()
            note = upstream_note(run_dir_of(up.config), up.config)
            if note:
                done.setdefault(up.config.digest(), results.read_json(Path(note["record"]), "results record"))
    print(json.dumps([{k: r[k] for k in ("paper", "preset", "pair", "seed", "best_top1", "best_epoch",
                                         "last_top1", "wall_time_s")} for r in records], indent=2))
    return 0


def _seeds(text: str) -> list[int]:
    """``--seed 0,3`` -> [0, 3]."""
    try:
        seeds = [int(s) for s in str(text).split(",")]
    except ValueError:
        raise UsageError(f"--seed takes seeds separated by commas, e.g. 0,1,2; got {text!r}") from None
    if any(s < 0 for s in seeds):
        raise UsageError(f"--seed takes seeds of 0 or more; got {text!r}")
    return seeds


def _models(names) -> None:
    """An unknown model name is bad input (exit 2), before any work."""
    from .models import resolve_name
    for name in names:
        try:
            resolve_name(name)
        except KeyError as exc:
            raise UsageError(exc.args[0]) from None


def _leaderboard(args) -> int:
    from .leaderboard import build
    out = build(results_dir=Path(args.results_dir) if args.results_dir else None, out_dir=Path(args.out))
    print(f"wrote {out}")
    return 0


def _check(args) -> int:
    from .check import bless_smoke, run_check
    from .registry import get_paper
    for paper in args.paper or ():
        get_paper(paper)  # an unknown paper is an error, not an empty check that passes
    results_dir = Path(args.results_dir) if args.results_dir else None
    if args.bless_smoke:
        for path in bless_smoke(results_dir, papers=args.paper):
            print(f"wrote {path}")
        return 0
    return run_check(results_dir, papers=args.paper, tolerance=args.tolerance)


def _bench(args) -> int:
    from .bench import bench
    from .data import DATASETS
    if "-" not in args.pair:
        raise UsageError(f"--pair takes <teacher>-<student>, got {args.pair!r}")
    _models(args.pair.split("-", 1))
    if args.dataset is not None and args.dataset not in DATASETS:
        raise UsageError(f"unknown dataset {args.dataset!r}; choose from: {', '.join(sorted(DATASETS))}")
    for flag, value in (("--batch-size", args.batch_size), ("--steps", args.steps)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    out = bench(pair=args.pair, batch_size=args.batch_size, steps=args.steps, device=args.device, as_json=args.json,
          amp=args.amp, channels_last=args.channels_last, dataset=args.dataset, workers=args.workers,
          reference=not args.no_reference, cache=not args.no_cache, compile=args.compile, fused=args.fused)
    if args.record:
        from .performance import record_bench
        print(f"wrote {record_bench(out)}")
    return 0


def _sweep(args) -> int:
    from .sweep import sweep
    return sweep(args)


def _profile(args) -> int:
    from .profiles import record_profiles
    _models(args.models)
    if args.iters < 1:
        raise UsageError(f"--iters must be at least 1, got {args.iters}")
    print(f"wrote {record_profiles(args.models or None, device=args.device, iters=args.iters)}")
    return 0


def _teachers(args) -> int:
    from .config import parse_overrides
    from .teachers_train import train_and_install
    overrides = parse_overrides(args.set)
    for model in args.models:
        print(f"installed {train_and_install(model, preset=args.preset, device=args.device, overrides=overrides)}")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kdbench", description="Reproduce knowledge-distillation papers.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="papers, presets and pairs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)
    p = sub.add_parser("reproduce", help="train a paper's recipe and record the result")
    p.add_argument("paper", help="paper id, <paper>+kd to add Hinton's KD term, or 'all'")
    p.add_argument("--preset", default="paper")
    p.add_argument("--pair", default=None, help="teacher-student, comma-separated, or 'all' (default: the preset's default pair)")
    p.add_argument("--seeds", type=int, default=1, help="run seeds 0..N-1")
    p.add_argument("--seed", default=None, help="explicit seed(s), comma-separated")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic GPU kernels (slower; the CPU is deterministic anyway)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=10")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configs and exit")
    p.add_argument("--results-dir", default=None)
    p.add_argument("--latency-iters", type=int, default=50)
    p.add_argument("--parallel", type=int, default=None,
                   help="runs side by side on the device (default: from free memory on CUDA, 1 elsewhere)")
    p.set_defaults(func=_reproduce)
    p = sub.add_parser("leaderboard", help="regenerate leaderboard/README.md and plots")
    p.add_argument("--results-dir", default=None)
    p.add_argument("--out", default="leaderboard")
    p.set_defaults(func=_leaderboard)
    p = sub.add_parser("check", help="compare recorded results with reported numbers and smoke references")
    p.add_argument("--results-dir", default=None)
    p.add_argument("--paper", action="append", default=None)
    p.add_argument("--bless-smoke", action="store_true", help="store the recorded smoke results as references")
    p.add_argument("--tolerance", type=float, default=None,
                   help="points the reproduced mean may fall below reported (default: each paper.yaml's, 1.0)")
    p.set_defaults(func=_check)
    p = sub.add_parser("bench", help="images/s of the whole KD training pipeline, kdbench's and the official code's way")
    p.add_argument("--pair", default="resnet32x4-resnet8x4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default=None)
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--dataset", default=None, help="cifar100 if on disk, else synthetic-cifar100 (same format)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers of the reference (default min(8, CPUs))")
    p.add_argument("--compile", action="store_true", help="torch.compile the models (train.compile)")
    p.add_argument("--fused", action="store_true", help="SGD's fused kernel (train.fused_optimizer)")
    p.add_argument("--no-reference", action="store_true", help="measure kdbench's pipeline only")
    p.add_argument("--no-cache", action="store_true", help="skip the teacher-logit cache measurement")
    p.add_argument("--record", action="store_true", help="store the figures in results/bench/ for the performance page")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_bench)
    p = sub.add_parser("sweep", help="papers x pairs x seeds as jobs, here or on Slurm; skips recorded runs")
    p.add_argument("paper", help="paper id(s), comma-separated, or 'all'")
    p.add_argument("--preset", default="paper")
    p.add_argument("--pair", default="all", help="'all' (default), comma-separated pairs, or '' for the default pair")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--executor", choices=["local", "slurm"], default="local")
    p.add_argument("--cluster", default=None, help=argparse.SUPPRESS)  # submitit's local/debug executors (tests)
    p.add_argument("--partition", default=None)
    p.add_argument("--timeout-min", type=int, default=24 * 60)
    p.add_argument("--cpus", type=int, default=8)
    p.add_argument("--mem-gb", type=int, default=32)
    p.add_argument("--parallel", type=int, default=64, help="Slurm array parallelism")
    p.add_argument("--wait", action="store_true", help="wait for the Slurm jobs and print their results")
    p.add_argument("--resume", action="store_true", help="local: continue runs from their last epoch checkpoint")
    p.add_argument("--deterministic", action="store_true", help="deterministic GPU kernels (see reproduce)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated cost")
    p.add_argument("--rate-from", default=None, help="a `kdbench bench --json` output to estimate the cost from")
    p.add_argument("--device", default=None)
    p.add_argument("--results-dir", default=None)
    p.set_defaults(func=_sweep)
    p = sub.add_parser("profile", help="record params, MACs and latency of zoo models on this device")
    p.add_argument("models", nargs="*")
    p.add_argument("--device", default=None)
    p.add_argument("--iters", type=int, default=30)
    p.set_defaults(func=_profile)
    p = sub.add_parser("teachers", help="train teachers with the paper recipe and install them")
    p.add_argument("models", nargs="+")
    p.add_argument("--preset", default="paper")
    p.add_argument("--device", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_teachers)
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"kdbench: error: {exc}", file=sys.stderr)
        return 2
    # a dataset or teacher that is missing and cannot be downloaded; a checkpoint that is damaged, altered
    # or does not fit; a file that could not be written for lack of space (its previous version is intact)
    except (Unavailable, CheckpointError, DiskFull) as exc:
        print(f"kdbench: error: {exc}", file=sys.stderr)
        return 1
    except TrainingFailed as exc:  # a non-finite loss or weight (kdbench.guard): no record was written
        print(f"kdbench: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk outside the atomic writers (e.g. appending to a log)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"kdbench: error: {os.strerror(exc.errno).lower()}"
              + (f" while writing {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
