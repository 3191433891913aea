"""Run configuration: one schema, strict keys, resolved in one place.

A paper's ``paper.yaml`` holds defaults, presets and per-pair overrides; the
resolved configuration of one run is ``defaults <- preset <- pair <- --set``.
Keeping one file per paper (instead of one copied file per pair) means a
setting such as weight decay cannot silently fall back to a code default in a
single pair's file; ``kdbench reproduce --dry-run`` prints every resolved
config. Unknown keys are errors, never ignored.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field

import yaml

from .errors import UsageError


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    momentum: float = 0.9
    nesterov: bool = False
    milestones: list[int] = field(default_factory=list)  # lr *= gamma when epoch > m (1-based)
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear lr warm-up from 0 over these epochs (0 = none)
    warmup_unit: str = "epoch"  # epoch: lr x e / warmup_epochs in epoch e | step: raised every step (see lr_at)
    test_batch_size: int = 256
    amp: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | bf16 | off
    channels_last: str = "auto"  # auto (on CUDA) | on | off
    eval_every: int = 1
    nonfinite: str = "stop"  # stop | skip: a NaN/inf loss stops the run, or its step is skipped (kdbench.guard)
    max_skipped_steps: int = 10  # skip: more skipped steps than this, in a row or in the run, stop it
    momentum_reset: bool = False  # clear SGD momentum when the lr decays (code that rebuilds its optimizer)
    teacher_cache: str = "auto"  # auto | on | off: exact per-view teacher-logit cache (kdbench.teacher_cache)
    compile: bool = False  # torch.compile the student and teacher (opt-in: measured in kdbench bench --compile)
    fused_optimizer: bool = False  # SGD's fused kernel (opt-in: same update rule, one kernel for all parameters)
    keep_checkpoints: list = field(default_factory=list)  # "best" and/or epochs whose student weights are kept
    best_tie: str = "first"  # the best epoch among equal top-1s: first (val > best) | last (val >= best)

    def lr_at(self, epoch: int, step: int | None = None, steps: int | None = None) -> float:
        """Learning rate of 1-based ``epoch`` (the official ``epoch > milestone`` rule).

        Warm-up: per epoch, epoch ``e <= warmup_epochs`` runs at ``lr x e / warmup_epochs``; per step,
        0-based step ``i`` of ``steps`` per epoch runs at ``lr x (k + 1) / (warmup_epochs x steps)`` with
        ``k = (e - 1) x steps + i`` (a ``WarmUpLR`` stepped before every batch: the first batch already
        moves, the last batch of the warm-up reaches the full lr). Without ``step`` a per-step warm-up
        epoch reports the lr it ends at."""
        lr = self.lr * self.gamma ** sum(epoch > m for m in self.milestones)
        if self.warmup_epochs and epoch <= self.warmup_epochs:
            if self.warmup_unit == "epoch":
                lr *= epoch / self.warmup_epochs
            elif step is not None:
                lr *= ((epoch - 1) * steps + step + 1) / (self.warmup_epochs * steps)
        return lr

    def warms_per_step(self, epoch: int) -> bool:
        return self.warmup_unit == "step" and epoch <= self.warmup_epochs

    def is_best(self, top1: float, best: float) -> bool:
        return top1 > best or (self.best_tie == "last" and top1 == best)


@dataclass
class StageConfig:
    """An extra training stage that runs before the main one (e.g. AB/FT/FSP init)."""

    name: str
    train: TrainConfig


@dataclass
class UpstreamRun:
    """Another pair of the same preset and seed whose trained student this run uses, as its teacher
    (``teacher_from``: assistants, generations, self-distillation) or as its initial weights
    (``init_from``: a full-precision model before quantisation). Its whole config is part of this
    run's, so changing any stage's recipe changes the digest of every run downstream of it."""

    pair: str
    checkpoint: str  # "last" | "best" | "epoch<N>": which of the upstream student's weights
    config: RunConfig


@dataclass
class RunConfig:
    paper: str
    preset: str
    pair: str
    dataset: str
    student: str
    teacher: str | None
    teacher_source: str  # published | train | none
    method: dict
    train: TrainConfig
    stages: list[StageConfig] = field(default_factory=list)
    teacher_train: TrainConfig | None = None  # recipe when teacher_source == "train"
    seed: int = 0
    statistic: str = "best"  # which top-1 the paper reports: best | last
    data_subset: dict | None = None  # synthetic-size options for smoke presets
    kd: dict | None = None  # {"weight", "temperature"}: add Hinton's KD term to the method (+kd)
    augment: dict | None = None  # {mean, std, padding_mode, padding, flip, rotation}: a paper's own transform
    teacher_augment: dict | None = None  # a trained teacher's own augmentation (augment with these keys replaced)
    teacher_checkpoint: dict | None = None  # a paper's own published teacher (see kdbench.teachers)
    sampler: str = "random"  # random | same_class_pairs (kdbench.data.make_loaders)
    teacher_from: UpstreamRun | None = None  # the teacher is the student of another run (teacher_source "run")
    teacher_ensemble: list[UpstreamRun] = field(default_factory=list)  # teacher_from a list: mean of their logits
    init_from: UpstreamRun | None = None  # the student starts from another run's student

    def upstream(self) -> list[UpstreamRun]:
        return [u for u in (self.teacher_from, self.init_from, *self.teacher_ensemble) if u is not None]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(non_default(self), sort_keys=True).encode()).hexdigest()[:12]


def non_default(obj):
    """``dataclasses.asdict`` without the fields left at their default: what identifies a recipe. A new
    option added with a default that keeps the old behaviour leaves the digest of every existing config,
    and so every cached teacher and completed upstream run, valid."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.default is not dataclasses.MISSING and value == f.default:
                continue
            if f.default_factory is not dataclasses.MISSING and value == f.default_factory():
                continue
            out[f.name] = non_default(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [non_default(v) for v in obj]
    if isinstance(obj, dict):
        return {k: non_default(v) for k, v in obj.items()}
    return obj


TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}
KD_KEYS = {"weight", "temperature"}
AUGMENT_KEYS = {"mean", "std", "padding_mode", "padding", "flip", "rotation"}
TEACHER_CHECKPOINT_KEYS = {"url", "file", "sha256", "state_key", "strip_prefix", "reported_top1"}
PRESET_KEYS = {"kd", "plus_kd_source", "dataset", "reported_source", "reported_method", "teacher_source", "seeds", "default_pair", "pairs", "train", "method",
               "stages", "teacher_train", "description", "data_subset", "augment", "teacher_augment", "teacher_checkpoint",
               "sampler"}
PAIR_KEYS = {"teacher", "student", "train", "method", "teacher_train", "stages", "teacher_checkpoint",
             "teacher_from", "init_from", "reported_pair", "reported_method", "sampler"}
UPSTREAM_KEYS = {"pair", "checkpoint"}
ENSEMBLE_PREFIX = "ensemble:"  # the teacher name of a run whose teacher_from is a list
AMP_CHOICES = {"auto", "bf16", "off"}
TEACHER_SOURCES = {"published", "train", "none", "run"}


def _strict(where: str, got: dict, allowed: set) -> None:
    if not isinstance(got, dict):
        raise UsageError(f"malformed config: {where} must be a mapping, got {type(got).__name__}")
    unknown = set(got) - allowed
    if unknown:
        raise UsageError(f"malformed config: unknown key(s) {sorted(unknown)} in {where}; "
                         f"valid: {', '.join(sorted(allowed))}")


def merge(base: dict, *overrides: dict) -> dict:
    """Deep merge of plain dicts; later wins; lists are replaced, not merged."""
    out = copy.deepcopy(base)
    for over in overrides:
        for key, value in (over or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


# TrainConfig's field types (their annotations) -> (check, what the value must be)
_TYPES = {"int": (_is_int, "an integer"), "float": (_is_number, "a finite number"),
          "bool": (lambda v: isinstance(v, bool), "true or false"), "str": (lambda v: isinstance(v, str), "a string"),
          "list[int]": (lambda v: isinstance(v, list) and all(map(_is_int, v)), "a list of integers, e.g. [150, 180]"),
          "list": (lambda v: isinstance(v, list), "a list, e.g. [best]")}


def _check_types(where: str, raw: dict) -> None:
    """A value of the wrong type (``train.lr=[1]``, ``train.milestones=5``) fails here, before any work,
    instead of deep inside a run."""
    for f in dataclasses.fields(TrainConfig):
        check, what = _TYPES[str(f.type)]
        if f.name in raw and not check(raw[f.name]):
            raise UsageError(f"malformed config: {where}.{f.name}={raw[f.name]!r}; it must be {what}")


def make_train(where: str, raw: dict) -> TrainConfig:
    _strict(where, raw, TRAIN_KEYS)
    required = {f.name for f in dataclasses.fields(TrainConfig)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = required - set(raw)
    if missing:
        raise UsageError(f"malformed config: {where} lacks {sorted(missing)}")
    _check_types(where, raw)
    cfg = TrainConfig(**raw)
    if cfg.amp not in AMP_CHOICES:
        raise UsageError(f"malformed config: {where}.amp={cfg.amp!r}; choose from: {', '.join(sorted(AMP_CHOICES))}")
    if cfg.teacher_cache not in {"auto", "on", "off"}:
        raise UsageError(f"malformed config: {where}.teacher_cache={cfg.teacher_cache!r}; choose from: auto, off, on")
    for name, valid in (("warmup_unit", ("epoch", "step")), ("best_tie", ("first", "last")),
                        ("nonfinite", ("stop", "skip"))):
        if getattr(cfg, name) not in valid:
            raise UsageError(f"malformed config: {where}.{name}={getattr(cfg, name)!r}; choose from: {', '.join(valid)}")
    if cfg.max_skipped_steps < 0:  # its type is checked above with every field's
        raise UsageError(f"malformed config: {where}.max_skipped_steps must be a non-negative integer")
    if cfg.channels_last not in {"auto", "on", "off"}:
        raise UsageError(f"malformed config: {where}.channels_last={cfg.channels_last!r}; choose from: auto, off, on")
    for name in ("epochs", "batch_size", "test_batch_size", "eval_every"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"malformed config: {where}.{name} must be a positive integer")
    if cfg.warmup_epochs < 0:
        raise UsageError(f"malformed config: {where}.warmup_epochs must be 0 or more")
    for keep in cfg.keep_checkpoints:
        if keep != "best" and not (isinstance(keep, int) and 1 <= keep <= cfg.epochs):
            raise UsageError(f"malformed config: {where}.keep_checkpoints holds {keep!r}; "
                             f"use 'best' or an epoch in 1..{cfg.epochs}")
    return cfg


def checkpoint_name(keep) -> str:
    """``"best"`` / ``"last"`` / an epoch number -> the name used in configs and file names."""
    return keep if keep in ("best", "last") or str(keep).startswith("epoch") else f"epoch{int(keep)}"


def _upstream(paper_id: str, spec: dict, preset: str, pair: str, seed: int, overrides: dict, raw,
              key: str, chain: tuple) -> UpstreamRun | None:
    """Resolve ``teacher_from`` / ``init_from`` of ``pair``: a pair name or {pair, checkpoint}."""
    if raw is None:
        return None
    raw = {"pair": raw} if isinstance(raw, str) else raw
    where = f"{paper_id}.presets.{preset}.pairs.{pair}.{key}"
    _strict(where, raw, UPSTREAM_KEYS)
    up = raw.get("pair")
    if up not in spec["presets"][preset]["pairs"]:
        raise UsageError(f"malformed config: {where} names pair {up!r}, which preset {preset!r} does not have; "
                         f"valid: {', '.join(spec['presets'][preset]['pairs'])}")
    if up in chain:
        raise UsageError(f"malformed config: {where} makes a cycle: {' -> '.join((*chain, up))}")
    config = resolve(paper_id, spec, preset, up, seed, overrides, _chain=chain)
    checkpoint = raw.get("checkpoint", "last")
    if checkpoint != "last":
        kept = [checkpoint_name(k) for k in config.train.keep_checkpoints]
        if checkpoint_name(checkpoint) not in kept:
            raise UsageError(f"malformed config: {where} wants the {checkpoint_name(checkpoint)!r} weights of {up!r}, "
                             f"whose train.keep_checkpoints keeps {kept or 'only the last'}")
    return UpstreamRun(up, checkpoint_name(checkpoint), config)


_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # 5e-4, which YAML 1.1 reads as a string


def parse_overrides(items: list[str]) -> dict:
    """``["train.lr=0.1", "method.beta=2"]`` -> nested dict (values parsed as YAML; ``5e-4`` as the
    number it means)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"malformed override {item!r}; expected key.path=value")
        path, value = item.split("=", 1)
        node = out
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise UsageError(f"malformed override {item!r}: another --set gives {key} a value, not keys")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise UsageError(f"malformed override {item!r}: {str(exc).splitlines()[0]}") from None
        node[keys[-1]] = float(parsed) if isinstance(parsed, str) and _EXPONENT.fullmatch(parsed) else parsed
    return out


def resolve(paper_id: str, spec: dict, preset: str, pair: str, seed: int, overrides: dict | None = None,
            _chain: tuple = ()) -> RunConfig:
    """The resolved config of one run of ``paper_id`` (and, nested in it, of every run it builds on)."""
    presets = spec["presets"]
    p = presets[preset]
    _strict(f"{paper_id}.presets.{preset}", p, PRESET_KEYS)
    pair_raw = p["pairs"][pair] or {}
    _strict(f"{paper_id}.presets.{preset}.pairs.{pair}", pair_raw, PAIR_KEYS)
    overrides = overrides or {}
    _strict("--set", overrides, {"train", "method", "teacher_train", "teacher_source", "dataset", "data_subset", "kd"})
    for key in ("train", "method", "teacher_train", "data_subset", "kd"):
        if not isinstance(overrides.get(key, {}), dict):
            raise UsageError(f"malformed override {key}={overrides[key]!r}: {key} takes keys, e.g. --set {key}.<key>=<value>")
    defaults = spec.get("defaults", {})
    train = merge(defaults.get("train", {}), p.get("train", {}), pair_raw.get("train", {}), overrides.get("train", {}))
    method = merge(defaults.get("method", {}), p.get("method", {}), pair_raw.get("method", {}), overrides.get("method", {}))
    teacher, student = split_pair(pair)
    teacher = pair_raw.get("teacher", teacher)
    student = pair_raw.get("student", student)
    source = overrides.get("teacher_source", p.get("teacher_source", "published" if teacher else "none"))
    if source not in TEACHER_SOURCES:
        raise UsageError(f"malformed config: teacher_source={source!r}; choose from: {', '.join(sorted(TEACHER_SOURCES))}")
    if teacher is None:
        source = "none"
    teacher_train = None
    if source == "train":
        raw = merge(train, p.get("teacher_train", {}), pair_raw.get("teacher_train", {}), overrides.get("teacher_train", {}))
        teacher_train = make_train(f"{paper_id}.presets.{preset}.teacher_train", raw)
    kd = merge(defaults.get("kd") or {}, p.get("kd") or {}, overrides.get("kd", {})) or None
    if kd is not None:
        _strict(f"{paper_id}.kd", kd, KD_KEYS)
        if set(kd) != KD_KEYS:
            raise UsageError(f"malformed config: {paper_id}.kd needs both weight and temperature")
    augment, teacher_augment = p.get("augment"), p.get("teacher_augment")
    for key, value in (("augment", augment), ("teacher_augment", teacher_augment)):
        if value is not None:
            _strict(f"{paper_id}.presets.{preset}.{key}", value, AUGMENT_KEYS)
            if value.get("padding_mode", "zeros") not in ("zeros", "reflect"):
                raise UsageError(f"malformed config: {paper_id}.{key}.padding_mode must be zeros or reflect")
    checkpoint = pair_raw.get("teacher_checkpoint", p.get("teacher_checkpoint"))
    if checkpoint is not None:
        _strict(f"{paper_id}.presets.{preset}.pairs.{pair}.teacher_checkpoint", checkpoint, TEACHER_CHECKPOINT_KEYS)
        if not {"url", "file"} <= set(checkpoint):
            raise UsageError(f"malformed config: {paper_id} teacher_checkpoint needs url and file")
    stages = [StageConfig(s["name"], make_train(f"{paper_id}.stages.{s['name']}", merge(train, s.get("train", {}))))
              for s in pair_raw.get("stages", p.get("stages", []))]  # a pair may replace the preset's stages
    chain = (*_chain, pair)
    raw_from = pair_raw.get("teacher_from")
    ensemble = [_upstream(paper_id, spec, preset, pair, seed, overrides, r, "teacher_from", chain)
                for r in raw_from] if isinstance(raw_from, list) else []
    teacher_from = None if ensemble else _upstream(paper_id, spec, preset, pair, seed, overrides, raw_from,
                                                   "teacher_from", chain)
    if ensemble:  # the teacher is the mean of the members' logits (kdbench.upstream.LogitEnsemble)
        teacher, source, teacher_train = ENSEMBLE_PREFIX + "+".join(u.config.student for u in ensemble), "run", None
    init_from = _upstream(paper_id, spec, preset, pair, seed, overrides, pair_raw.get("init_from"), "init_from", chain)
    if teacher_from is not None:
        teacher, source, teacher_train = teacher_from.config.student, "run", None
    if teacher_augment is not None:  # only a teacher trained here has one: augment with these keys replaced
        teacher_augment = {**(augment or {}), **teacher_augment} if source == "train" else None
    return RunConfig(
        paper=paper_id, preset=preset, pair=pair, dataset=overrides.get("dataset", p["dataset"]),
        student=student, teacher=teacher, teacher_source=source, method=method,
        train=make_train(f"{paper_id}.presets.{preset}.train", train), stages=stages,
        teacher_train=teacher_train, seed=seed, statistic=spec.get("statistic", "best"),
        data_subset=_subset(paper_id, merge(p.get("data_subset") or {}, overrides.get("data_subset", {})) or None), kd=kd,
        augment=augment, teacher_augment=teacher_augment, teacher_checkpoint=checkpoint, teacher_from=teacher_from,
        teacher_ensemble=ensemble,
        init_from=init_from, sampler=_sampler(paper_id, pair_raw.get("sampler", p.get("sampler", "random"))),
    )


def _subset(paper_id: str, subset: dict | None) -> dict | None:
    from .data import SUBSET_KEYS
    if subset is not None:
        _strict(f"{paper_id} data_subset", subset, set(SUBSET_KEYS))
        for key, value in subset.items():
            if value is not None and (not _is_int(value) or value < 1):
                raise UsageError(f"malformed config: {paper_id} data_subset.{key}={value!r}; it must be a positive integer")
    return subset


def _sampler(paper_id: str, name: str) -> str:
    from .data import SAMPLERS
    if name not in SAMPLERS:
        raise UsageError(f"malformed config: {paper_id} sampler={name!r}; choose from: {', '.join(SAMPLERS)}")
    return name


def split_pair(pair: str) -> tuple[str | None, str]:
    """``"resnet32x4-resnet8x4"`` -> (teacher, student); ``"resnet8x4"`` -> (None, student)."""
    if "-" in pair:
        teacher, student = pair.split("-", 1)
        return teacher, student
    return None, pair
