"""paper + preset + pair + seeds -> teacher, stages, training -> results records."""
from __future__ import annotations

import inspect
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, determinism, distributed, results, teachers, upstream
from . import resume as resuming
from .config import RunConfig, TrainConfig, resolve
from .data import DATASETS, make_loaders
from .distiller import DataInfo, Vanilla, add_kd
from .errors import UsageError
from .evaluate import accuracy, count_parameters, device_name, profile
from .models import create_model, resolve_name
from .registry import Paper
from .teacher_cache import TeacherLogitCache
from .train import fit, resolve_precision


def runs_root() -> Path:
    return Path(os.environ.get("KDBENCH_RUNS", "runs"))


def run_dir_of(cfg: RunConfig) -> Path:
    """Checkpoints and logs of one run."""
    return runs_root() / cfg.paper / cfg.preset / cfg.pair / f"seed{cfg.seed}"


def pick_device(name: str | None = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def plan(paper: Paper, preset: str, pairs: list[str], seeds: list[int], overrides: dict) -> list[RunConfig]:
    """Resolve every run up front so that a bad pair, key or value fails before any work."""
    for pair in pairs:
        paper.check_pair(preset, pair)
    configs = [resolve(paper.id, paper.spec, preset, pair, seed, overrides) for pair in pairs for seed in seeds]
    for cfg in _with_upstream(configs):
        if cfg.dataset not in DATASETS:
            raise UsageError(f"unknown dataset {cfg.dataset!r}; choose from: {', '.join(sorted(DATASETS))}")
        for model in filter(None, (cfg.student, None if cfg.teacher_ensemble else cfg.teacher)):
            try:
                resolve_name(model)
            except KeyError as exc:
                raise UsageError(exc.args[0]) from None
        build_distiller(paper, cfg, None, None, dry=True)
    return configs


def _with_upstream(configs: list[RunConfig]) -> list[RunConfig]:
    """The configs and, recursively, those of every run they build on."""
    out = []
    for cfg in configs:
        out += [cfg, *_with_upstream([u.config for u in cfg.upstream()])]
    return out


def build_distiller(paper: Paper, cfg: RunConfig, student, teacher, dry: bool = False, data: DataInfo | None = None):
    cls = paper.method_class()
    params = inspect.signature(cls.__init__).parameters
    valid = [n for n in params if n not in ("self", "student", "teacher", "data")]
    unknown = set(cfg.method) - set(valid)
    if unknown:
        raise UsageError(f"malformed config: unknown method option(s) {sorted(unknown)} for {cls.__name__}; "
                         f"valid: {', '.join(valid)}")
    for name, value in cfg.method.items():
        _check_option(cls, name, params[name].annotation, value)
    if dry:
        if cfg.kd and cfg.teacher is None:
            raise UsageError(f"{cfg.paper}: +kd needs a teacher, and pair {cfg.pair!r} has none")
        return None
    extra = {"data": data} if "data" in params else {}
    distiller = cls(student, teacher, **cfg.method, **extra)
    return add_kd(distiller, **cfg.kd) if cfg.kd else distiller


_OPTION_TYPES = {"float": ((int, float), "a number"), "int": ((int,), "an integer"),
                 "bool": ((bool,), "true or false"), "str": ((str,), "a string")}


def _check_option(cls, name: str, annotation, value) -> None:
    """A method option of the wrong type (``--set method.beta=abc``) fails before any work. Checked for
    options annotated float, int, bool or str (optionally ``| None``); others are the method's to check."""
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    base = kind.removesuffix(" | None")
    if base not in _OPTION_TYPES or (value is None and kind.endswith(" | None")):
        return
    types, what = _OPTION_TYPES[base]
    if not isinstance(value, types) or (base != "bool" and isinstance(value, bool)):
        raise UsageError(f"malformed config: method option {name}={value!r} of {cls.__name__}; it must be {what}")


def loaders_for(cfg: RunConfig, train: TrainConfig, device, channels_last: bool, seed: int | None = None,
                teacher: bool = False):
    """Train/test loaders; under torchrun each process gets its shard of every global batch. ``teacher``:
    for a teacher trained here (its own ``cfg.teacher_augment`` if any, and plain shuffled batches)."""
    world = distributed.world_size()
    if train.batch_size % world:
        raise UsageError(f"batch size {train.batch_size} does not split over {world} processes")
    return make_loaders(cfg.dataset, batch_size=train.batch_size // world, device=device,
                        seed=cfg.seed if seed is None else seed, test_batch_size=train.test_batch_size,
                        channels_last=channels_last, subset=cfg.data_subset,
                        augment=(cfg.teacher_augment if teacher else None) or cfg.augment,
                        shard=(distributed.rank(), world), sampler="random" if teacher else cfg.sampler)


def setup_teacher_cache(distiller, cfg: RunConfig, train_loader, num_classes: int, device, amp: bool) -> dict:
    """Attach a teacher-logit cache where ``train.teacher_cache`` and the run allow it; say why not."""
    mode, reason = cfg.train.teacher_cache, None
    if mode == "off":
        return {"enabled": False, "reason": "train.teacher_cache is off"}
    if distiller.teacher is None:
        reason = "the run has no teacher"
    elif distiller.teacher_bn != "eval":
        reason = "the teacher's BatchNorm runs on batch statistics (its logits depend on the batch)"
    elif getattr(train_loader, "num_views", None) is None:
        reason = "the training augmentation has no finite set of views"
    cache = None
    if reason is None:
        cache = TeacherLogitCache(train_loader.num_samples, train_loader.num_views, num_classes, device,
                                  torch.bfloat16 if amp else torch.float32)
        if not cache.fits():
            reason = f"it needs {cache.nbytes / 1e9:.2f} GB, more than the free memory allows"
    if reason is not None:
        if mode == "on":
            raise UsageError(f"train.teacher_cache=on, but {reason}")
        return {"enabled": False, "reason": reason}
    distiller.logit_cache = cache
    return {"enabled": True, "reason": "teacher in eval mode, finite views, fits in memory",
            "table_bytes": cache.nbytes}


def run_one(paper: Paper, cfg: RunConfig, *, device: torch.device, resume: bool = False,
            results_dir: Path | None = None, latency_iters: int = 50, log=None) -> dict:
    """Train one (pair, seed) of a preset and write its results record."""
    log = log or (lambda msg: print(msg, flush=True))

    def train_upstream(up_cfg: RunConfig) -> None:
        run_one(paper, up_cfg, device=device, resume=resume, results_dir=results_dir,
                latency_iters=latency_iters, log=log)
        distributed.barrier()  # under torchrun: process 0 has written the upstream weights and note

    weights = {kind: upstream.ensure_upstream(up, run_dir_of, train_upstream, log)
               for kind, up in (("teacher", cfg.teacher_from), ("init", cfg.init_from)) if up is not None}
    members = [upstream.ensure_upstream(up, run_dir_of, train_upstream, log) for up in cfg.teacher_ensemble]
    start = time.time()  # this run's own time, upstream runs excluded (they have their own records)
    seed_everything(cfg.seed)
    run_dir = run_dir_of(cfg)
    num_classes, image_size = DATASETS[cfg.dataset]["num_classes"], DATASETS[cfg.dataset]["image_size"]
    amp, channels_last = resolve_precision(cfg.train, device)
    if device.type == "cuda" and not determinism.enabled():
        torch.backends.cudnn.benchmark = True
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def train_teacher(arch: str, train_cfg: TrainConfig, out_dir: Path):
        log(f"training teacher {arch} on {cfg.dataset} (cached in {out_dir})")
        t_train, t_test, _ = loaders_for(cfg, train_cfg, device, channels_last, seed=0, teacher=True)
        seed_everything(0)
        model = create_model(arch, num_classes=num_classes).to(device, memory_format=memory_format)
        state = fit(Vanilla(model), t_train, t_test, train_cfg, run_dir=out_dir, log=log, resume=resume,
                    identity=out_dir.name)  # the folder is named by the hash of the teacher's recipe
        return model, {"best_top1": state["best_top1"], "last_top1": state["history"][-1]["test_top1"]}

    train_loader, test_loader, _ = loaders_for(cfg, cfg.train, device, channels_last)  # data first: fail early
    if members:  # the mean logits of the students of several upstream runs
        teacher = upstream.LogitEnsemble([create_model(u.config.student, num_classes=num_classes)
                                          for u in cfg.teacher_ensemble], [state for state, _ in members],
                                         [info["path"] for _, info in members])
        teacher, teacher_info = teacher.to(device), {"source": "run", "ensemble": [info for _, info in members]}
    elif "teacher" in weights:  # the student of an upstream run of this preset
        teacher = checkpoint.load_state_strict(create_model(cfg.teacher, num_classes=num_classes),
                                               weights["teacher"][0], weights["teacher"][1]["path"])
        teacher, teacher_info = teacher.to(device), {"source": "run", **weights["teacher"][1]}
    else:
        teacher, teacher_info = teachers.get_teacher(cfg, num_classes, device, train_teacher)
    seed_everything(cfg.seed)
    if teacher is not None:
        teacher = teacher.to(memory_format=memory_format)
        teacher_info["measured_top1"] = accuracy(teacher, test_loader, amp=amp)["top1"]
        log(f"teacher {cfg.teacher}: top1 {teacher_info['measured_top1']:.2f} ({teacher_info['source']})")
    student = create_model(cfg.student, num_classes=num_classes)
    if "init" in weights:
        checkpoint.load_state_strict(student, weights["init"][0], weights["init"][1]["path"])
    student = student.to(device, memory_format=memory_format)
    data = DataInfo(num_samples=train_loader.num_samples, num_classes=num_classes, image_size=image_size,
                    train_labels=train_loader.labels, dataset=cfg.dataset,
                    train_inputs=getattr(train_loader, "raw_inputs", None))
    distiller = build_distiller(paper, cfg, student, teacher, data=data).to(device)
    if distributed.active() and not getattr(distiller, "supports_data_parallel", True):
        raise UsageError(f"{cfg.paper} keeps per-sample state across steps and cannot run on several processes")
    cache_info = setup_teacher_cache(distiller, cfg, train_loader, num_classes, device, amp)
    log(f"teacher-logit cache: {'on' if cache_info['enabled'] else 'off'} ({cache_info['reason']})")
    skipped = 0  # steps skipped for a non-finite loss (train.nonfinite: skip), every stage
    for stage in cfg.stages:
        skipped += fit(distiller, train_loader, test_loader, stage.train, run_dir=run_dir, stage=stage.name,
                       resume=resume, log=log, identity=cfg.digest()).get("skipped_steps", 0)
    state = fit(distiller, train_loader, test_loader, cfg.train, run_dir=run_dir, resume=resume, log=log,
                identity=cfg.digest())
    history = state["history"]
    last = next(h for h in reversed(history) if "test_top1" in h)
    prof = profile(student, image_size=image_size, amp=amp, channels_last=channels_last,
                   iters=latency_iters, warmup=max(2, latency_iters // 5))
    record = {
        "paper": cfg.paper, "method": type(distiller).__name__, "dataset": cfg.dataset,
        "teacher": cfg.teacher, "student": cfg.student, "pair": cfg.pair, "preset": cfg.preset,
        "seed": cfg.seed, "epochs": cfg.train.epochs, "statistic": cfg.statistic,
        "best_top1": state["best_top1"], "best_epoch": state["best_epoch"], "best_top5": state.get("best_top5"),
        "last_top1": last["test_top1"], "last_top5": last["test_top5"],
        "reported_top1": state["best_top1"] if cfg.statistic == "best" else last["test_top1"],
        "params": {"student": count_parameters(student), "extra": distiller.num_extra_parameters()},
        "macs": prof["macs"], "latency": {"batch1": prof["latency_b1"], "throughput": prof["latency_throughput"]},
        "teacher_info": teacher_info, "init_info": weights["init"][1] if "init" in weights else None,
        "device": device_name(device),
        "precision": "bf16" if amp else "fp32",
        "teacher_cache": {**cache_info, **(distiller.logit_cache.summary() if distiller.logit_cache else {})},
        "channels_last": channels_last, "config": cfg.to_dict(), "deterministic": determinism.enabled(),
        "skipped_steps": skipped + state.get("skipped_steps", 0),
        "train_img_s": sum(h["train_img_s"] for h in history) / len(history),
        "wall_time_s": time.time() - start, "run_dir": str(run_dir), **results.environment(),
    }
    record["world_size"] = distributed.world_size()
    if not distributed.is_main():
        return record
    path = results.write(record, results_dir)
    upstream.mark_complete(run_dir, cfg, record, path)
    resuming.discard_cache(run_dir)
    log(f"{cfg.paper}/{cfg.preset} {cfg.pair} seed {cfg.seed}: best top1 {record['best_top1']:.2f} "
        f"(epoch {record['best_epoch']}), last {record['last_top1']:.2f} -> {path}")
    return record
