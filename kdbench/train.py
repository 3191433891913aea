"""The training loop: SGD on the config's schedule, per-epoch eval, JSONL log,
an atomic checkpoint every epoch and exact resume (:mod:`kdbench.resume`), no NaN let through
(:mod:`kdbench.guard`)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint, distributed
from . import resume as resuming
from .config import TrainConfig, checkpoint_name
from .distiller import Distiller, StepContext
from .evaluate import accuracy, autocast
from .guard import NonFiniteGuard


def resolve_precision(cfg: TrainConfig, device: torch.device) -> tuple[bool, bool]:
    """(bf16 autocast?, channels_last?) — 'auto' means on for CUDA, off elsewhere."""
    amp = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    cl = cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")
    return amp, cl


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD as the official recipes use it; ``fused_optimizer`` selects the fused kernel (same rule)."""
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov, **({"fused": True} if cfg.fused_optimizer else {}))


def compile_models(distiller: Distiller) -> None:
    """``torch.compile`` the student and teacher in place (``Module.compile`` keeps state-dict keys, so
    checkpoints stay loadable without it)."""
    for model in (distiller.student, distiller.teacher):
        if model is not None and not getattr(model, "_compiled_call_impl", None):
            model.compile()


def kept_path(run_dir: Path, stage: str, keep) -> Path:
    """File of the student's weights kept at ``keep`` ("best", "last" or an epoch) of ``stage``."""
    return Path(run_dir) / f"student-{stage}-{checkpoint_name(keep)}.pt"


def _state(distiller: Distiller) -> dict:
    """Everything but the frozen teacher (it is reloaded from its own checkpoint)."""
    return {k: v for k, v in distiller.state_dict().items() if not k.startswith("teacher.")}


def train_step(distiller: Distiller, optimizer, images, labels, ctx: StepContext, amp: bool,
               guard: NonFiniteGuard | None = None) -> dict:
    """One optimisation step on the sum of the method's named loss terms; returns the terms ({} if
    ``guard`` skipped the step)."""
    with autocast(images.device, amp):
        _, losses = distiller(images, labels, ctx)
    optimizer.zero_grad(set_to_none=True)
    total = sum(losses.values())
    total.backward()
    distributed.average_gradients(p for group in optimizer.param_groups for p in group["params"])
    if guard is not None and not guard.allow(total, losses):
        return {}
    optimizer.step()
    return losses


def fit(distiller: Distiller, train_loader, test_loader, cfg: TrainConfig, *, run_dir: Path,
        stage: str = "main", resume: bool = False, progress: bool | None = None, log=None,
        identity: str | None = None) -> dict:
    """Train ``distiller`` for ``cfg.epochs`` epochs; return the stage summary. ``identity`` (the config's
    digest) is stored in the checkpoint; ``resume`` continues only from a checkpoint of the same one."""
    log = log or (lambda msg: print(msg, flush=True))
    main = distributed.is_main()  # under torchrun only process 0 writes
    device = next(distiller.student.parameters()).device
    amp, _ = resolve_precision(cfg, device)
    params = distiller.trainable_parameters(stage)
    optimizer = make_optimizer(params, cfg)
    if cfg.compile:
        compile_models(distiller)
    ckpt_path, log_path = Path(run_dir) / f"checkpoint-{stage}.pt", Path(run_dir) / f"log-{stage}.jsonl"
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    state = {"epoch": 0, "best_top1": -1.0, "best_epoch": 0, "history": []}
    saved = resuming.load(ckpt_path, identity, device, log, distiller) if resume else None
    if saved is not None:  # weights, optimizer, random generators as at the end of the saved epoch
        state = resuming.restore(saved, distiller, optimizer, ckpt_path)
        log(f"resumed {stage} from epoch {state['epoch']}")
    if main:
        checkpoint.discard_partial(run_dir)
        resuming.start_log(log_path, state["history"])
    resuming.restore_cache(distiller, run_dir, stage, state["epoch"])
    guard = NonFiniteGuard(cfg.nonfinite, cfg.max_skipped_steps, stage, ckpt_path, state)
    distributed.broadcast_parameters(params)  # the same start on every process (no-op in one process)
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        lr = cfg.lr_at(epoch)
        if cfg.momentum_reset and epoch - 1 in cfg.milestones:
            optimizer.state.clear()  # as code that builds a new optimizer at each decay
        for group in optimizer.param_groups:
            group["lr"] = lr
        distiller.train()
        train_loader.set_epoch(epoch)
        sums: dict[str, torch.Tensor] = {}
        seen, counted, start = 0, 0, time.perf_counter()
        guard.begin(epoch)
        bar = tqdm(train_loader.batches(), total=len(train_loader), desc=f"{stage} {epoch}/{cfg.epochs}", unit="batch",
                   leave=False, disable=not (sys.stderr.isatty() if progress is None else progress))
        for step, (images, labels, indices, views) in enumerate(bar):
            if cfg.warms_per_step(epoch):
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr_at(epoch, step, len(train_loader))
            ctx = StepContext(epoch=epoch, epochs=cfg.epochs, stage=stage, indices=indices, views=views)
            losses = train_step(distiller, optimizer, images, labels, ctx, amp, guard)
            for name, value in losses.items():  # stays on the device: no sync per step
                sums[name] = sums.get(name, 0.0) + value.detach().float() * labels.shape[0]
            seen, counted = seen + labels.shape[0], counted + (labels.shape[0] if losses else 0)
            bar.set_postfix(img_s=f"{seen / (time.perf_counter() - start):.0f}", refresh=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time = time.perf_counter() - start
        record = {"epoch": epoch, "stage": stage, "lr": lr, "train_img_s": seen / train_time,
                  "train_time_s": train_time, **{k: (v / counted).item() for k, v in sums.items()}}
        guard.end(distiller, record, state)  # raises on a non-finite loss or weight: nothing of it is saved
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            distributed.broadcast_buffers(distiller.student)
            test = accuracy(distiller.student, test_loader, amp=amp)
            record.update(test_top1=test["top1"], test_top5=test["top5"], test_loss=test["loss"])
            if cfg.is_best(test["top1"], state["best_top1"]):
                state.update(best_top1=test["top1"], best_epoch=epoch, best_top5=test["top5"])
        state["epoch"] = epoch
        state["history"].append(record)
        resuming.save_cache(distiller, run_dir, stage, epoch)  # every process its own entries
        if not main:
            continue
        keep = [k for k in cfg.keep_checkpoints if k == epoch or (k == "best" and state["best_epoch"] == epoch)]
        for k in keep:  # weights another run builds on (config.UpstreamRun); before the checkpoint: a kill redoes them
            checkpoint.atomic_save({"model": distiller.student.state_dict(), "epoch": epoch,
                                    "top1": record.get("test_top1")}, kept_path(run_dir, stage, k))
        with open(log_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        checkpoint.atomic_save(resuming.payload(_state(distiller), optimizer, state, distiller, identity), ckpt_path)
        log(f"[{stage}] epoch {epoch}/{cfg.epochs} lr {lr:.4g} "
            + " ".join(f"{k} {record[k]:.4f}" for k in sums)
            + (f" top1 {record['test_top1']:.2f} (best {state['best_top1']:.2f}@{state['best_epoch']})"
               if "test_top1" in record else "")
            + f" {record['train_img_s']:.0f} img/s")
    return state
