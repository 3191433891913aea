"""``kdbench sweep``: papers x pairs x seeds -> one job per run, run here or on a Slurm cluster.

* The jobs are exactly the runs ``kdbench reproduce`` would make (same :func:`kdbench.reproduce.plan`,
  same :func:`kdbench.reproduce.run_one`), so records land in ``results/`` and the leaderboard and
  ``check`` work unchanged.
* A job whose record already exists (and parses, with the same resolved config) is skipped, so a sweep
  can be re-submitted after failures or pre-emption until nothing is left; with ``--resume`` a run that
  was interrupted continues from its last epoch checkpoint (exact resume, :mod:`kdbench.resume`) instead
  of starting again. Locally, a run that stops on a non-finite loss is reported and the others still run.
* ``--executor slurm`` submits through submitit (``pip install 'kdbench[cluster]'``), one array job;
  each job is checkpointable: on pre-emption or time-out submitit requeues it with ``resume=True``,
  which continues from the run's last epoch checkpoint (exact resume).
* ``--dry-run`` prints the plan with a cost estimate: MACs of the run (teacher forward + 3 x student
  forward per training image, every stage's epochs; connectors ignored) divided by the MAC rate
  measured by ``kdbench bench`` on a device (``--rate-from`` a ``bench --json`` output, else a short
  measurement here). The estimate is in hours *of the device that was measured*.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import results
from .config import RunConfig, parse_overrides
from .data import DATASETS
from .errors import TrainingFailed, Unavailable, UsageError
from .registry import Paper, get_paper, papers


@dataclass
class Job:
    paper: Paper
    cfg: RunConfig
    record: Path
    done: bool = False
    cost_s: float | None = None
    macs: float | None = None
    notes: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.cfg.paper}/{self.cfg.preset}/{self.cfg.pair}/seed{self.cfg.seed}"


def expand(paper_ids: str, preset: str, pairs: str | None, seeds: list[int], overrides: dict,
           results_dir: Path | None = None) -> list[Job]:
    """Every run of the sweep, each marked ``done`` when its record already exists with the same config."""
    from .reproduce import plan

    chosen = ([p for p in papers().values() if preset in p.presets] if paper_ids == "all"
              else [get_paper(pid) for pid in paper_ids.split(",")])
    root = Path(results_dir) if results_dir else results.results_root()
    jobs = []
    for paper in chosen:
        paper.preset(preset)
        names = (paper.pairs(preset) if pairs == "all" else
                 [paper.default_pair(preset)] if not pairs else pairs.split(","))
        for cfg in plan(paper, preset, names, seeds, overrides):
            path = results.record_path(root, cfg.paper, cfg.preset, cfg.pair, cfg.seed)
            jobs.append(Job(paper, cfg, path, done=_recorded(path, cfg)))
    return jobs


def _recorded(path: Path, cfg: RunConfig) -> bool:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return record.get("config") == json.loads(json.dumps(cfg.to_dict()))


def train_images(cfg: RunConfig) -> int:
    info = DATASETS[cfg.dataset]
    if cfg.dataset == "imagenet":
        return 1_281_167
    if info["synthetic"]:
        from .data.synthetic import DEFAULT_SIZES
        from .data.synthetic_mnist import DEFAULT_SIZE as MNIST_SIZE
        default = MNIST_SIZE[0] if info["layout"] == "mnist" else DEFAULT_SIZES[cfg.dataset][0]
        per_class = (cfg.data_subset or {}).get("train_per_class") or default
        return per_class * info["num_classes"]
    per_class = (cfg.data_subset or {}).get("train_per_class")
    return per_class * info["num_classes"] if per_class else (60_000 if info["layout"] == "mnist" else 50_000)


_MACS: dict[tuple[str, int], int] = {}


def model_macs(name: str, image_size: int, num_classes: int) -> int:
    from .evaluate import count_macs
    from .models import create_model
    key = (name, image_size)
    if key not in _MACS:
        model = create_model(name, num_classes=num_classes)
        _MACS[key] = count_macs(model, (1, getattr(model, "input_channels", 3), image_size, image_size))
    return _MACS[key]


def run_macs(cfg: RunConfig) -> float:
    """Training MACs of a run: per image, teacher forward + 3 x student forward, over every stage."""
    info = DATASETS[cfg.dataset]
    size, classes = info["image_size"], info["num_classes"]
    per_image = 3 * model_macs(cfg.student, size, classes)
    teachers = [u.config.student for u in cfg.teacher_ensemble] or [cfg.teacher]
    for teacher in filter(None, teachers):
        per_image += model_macs(teacher, size, classes)
    epochs = cfg.train.epochs + sum(s.train.epochs for s in cfg.stages)
    return float(per_image) * train_images(cfg) * epochs


def measured_rate(rate_from: str | None, device=None) -> tuple[float, str]:
    """(MAC/s, device) from a ``kdbench bench --json`` output, else from a short measurement here."""
    if rate_from:
        bench = json.loads(Path(rate_from).read_text())
    else:
        from .bench import bench as run_bench
        bench = run_bench(pair="resnet56-resnet20", batch_size=64, steps=5, device=device, as_json=False,
                          reference=False, cache=False)
    teacher, student = bench["pair"].split("-", 1)
    per_image = model_macs(teacher, 32, 100) + 3 * model_macs(student, 32, 100)
    return bench["kdbench_img_s"] * per_image, bench["device"]


class RunJob:
    """One sweep job as a picklable callable; submitit calls ``checkpoint`` on pre-emption/time-out and
    requeues the returned submission, which resumes from the run's last epoch checkpoint."""

    def __init__(self, deterministic: bool = False):
        self.deterministic = deterministic

    def __call__(self, paper_id: str, preset: str, pair: str, seed: int, overrides: dict,
                 results_dir: str | None = None, resume: bool = False) -> dict:
        from .reproduce import pick_device, plan, run_one
        if self.deterministic:
            from .determinism import enable
            enable()
        paper = get_paper(paper_id)
        (cfg,) = plan(paper, preset, [pair], [seed], overrides)
        record = run_one(paper, cfg, device=pick_device(), resume=resume,
                         results_dir=Path(results_dir) if results_dir else None)
        return {k: record[k] for k in ("paper", "preset", "pair", "seed", "best_top1", "last_top1")}

    def checkpoint(self, *args, **kwargs):
        import submitit
        return submitit.helpers.DelayedSubmission(RunJob(self.deterministic), *args, **{**kwargs, "resume": True})


def submit_slurm(jobs: list[Job], overrides: dict, results_dir: str | None, *, folder: Path, partition: str | None,
                 timeout_min: int, cpus: int, mem_gb: int, parallel: int, cluster: str | None = None,
                 deterministic: bool = False):
    try:
        import submitit
    except ImportError:
        raise Unavailable("--executor slurm needs submitit: pip install 'kdbench[cluster]'") from None
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params = dict(timeout_min=timeout_min, cpus_per_task=cpus, mem_gb=mem_gb, slurm_array_parallelism=parallel)
    if executor.cluster == "slurm":
        params.update(gpus_per_node=1, tasks_per_node=1, nodes=1)
        if partition:
            params["slurm_partition"] = partition
    executor.update_parameters(name="kdbench", **params)
    with executor.batch():
        handles = [executor.submit(RunJob(deterministic), j.cfg.paper, j.cfg.preset, j.cfg.pair, j.cfg.seed, overrides, results_dir)
                   for j in jobs]
    return handles


def sweep(args) -> int:
    overrides = parse_overrides(args.set)
    if args.seeds < 1:
        raise UsageError("--seeds must be at least 1")
    jobs = expand(args.paper, args.preset, args.pair, list(range(args.seeds)), overrides, args.results_dir)
    pending = [j for j in jobs if not j.done]
    if args.dry_run:
        rate, device = measured_rate(args.rate_from, args.device)
        total = 0.0
        print(f"{len(jobs)} runs, {len(jobs) - len(pending)} already recorded, {len(pending)} to run; "
              f"cost from {rate / 1e9:.1f} GMAC/s measured on {device}")
        for j in jobs:
            macs = run_macs(j.cfg)
            hours = macs / rate / 3600
            total += 0.0 if j.done else hours
            print(f"  {'done' if j.done else 'todo'}  {j.name:<55} {macs / 1e15:8.2f} PMAC  {hours:9.2f} h")
        print(f"estimated {total:.1f} {device}-hours for the runs to do (compute only; evaluation, data and "
              f"connectors excluded)")
        return 0
    if not pending:
        print(f"nothing to run: all {len(jobs)} runs are recorded")
        return 0
    results_dir = str(args.results_dir) if args.results_dir else None
    if args.executor == "local":
        run, failed = RunJob(args.deterministic), []
        for j in pending:
            print(f"running {j.name}", flush=True)
            try:
                run(j.cfg.paper, j.cfg.preset, j.cfg.pair, j.cfg.seed, overrides, results_dir, resume=args.resume)
            except TrainingFailed as exc:  # its last good checkpoint stays; the other runs go on
                print(f"FAILED {j.name}: {exc}", flush=True)
                failed.append(j)
        print(f"done: {len(pending) - len(failed)} runs recorded, {len(failed)} failed, "
              f"{len(jobs) - len(pending)} skipped")
        return 1 if failed else 0
    from .reproduce import runs_root
    folder = runs_root() / "sweeps" / time.strftime("%Y%m%d-%H%M%S")
    handles = submit_slurm(pending, overrides, results_dir, folder=folder, partition=args.partition,
                           timeout_min=args.timeout_min, cpus=args.cpus, mem_gb=args.mem_gb,
                           parallel=args.parallel, cluster=args.cluster, deterministic=args.deterministic)
    print(f"submitted {len(handles)} jobs ({len(jobs) - len(pending)} skipped); logs in {folder}")
    if args.wait:
        for j, h in zip(pending, handles):
            print(f"{j.name}: {h.result()}")
    return 0
