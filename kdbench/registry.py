"""Paper registry: discovers ``reproductions/<paper>/paper.yaml``.

This is the only place where ``kdbench`` reaches into ``reproductions``; adding
a paper is adding a folder with a ``paper.yaml`` (metadata, presets, pairs),
a ``reported.csv`` (numbers with their sources) and the method module.
"""
from __future__ import annotations

import copy
import csv
import functools
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import UsageError, choices

PAPER_KEYS = {"paper", "title", "arxiv", "venue", "official_code", "method", "statistic", "seeds",
              "tolerance", "smoke_tolerance", "defaults", "presets", "reported", "notes", "claims"}
CLAIM_KEYS = {"claim", "source", "preset", "better", "than", "by"}


@dataclass(frozen=True)
class Claim:
    """A paper's claim as a checkable relation between runs: the mean statistic of ``better`` is at
    least ``by`` points above that of ``than`` (``by`` may be negative: "no worse than by more than").
    Each side is a pair of ``preset`` or ``paper/preset/pair``; ``source`` says where the paper says it."""

    paper: str
    claim: str
    source: str
    better: tuple[str, str, str]  # (paper, preset, pair)
    than: tuple[str, str, str]
    by: float = 0.0


@dataclass(frozen=True)
class Reported:
    """One reported number with its source (a row of a paper's ``reported.csv``)."""

    method: str
    source: str
    table: str
    dataset: str  # normalised: cifar100, imagenet, ...
    teacher: str
    student: str
    top1: float | None  # accuracy in %, converted from error where the source reports error
    teacher_top1: float | None
    student_top1: float | None
    notes: str

    @property
    def pair(self) -> str:
        return f"{self.teacher}-{self.student}" if self.teacher else self.student

    @property
    def flagged(self) -> str:
        """'UNVERIFIED' / 'THIRD-PARTY' label that must stay visible, or ''."""
        text = f"{self.source} {self.notes}".upper()
        for flag in ("UNVERIFIED", "THIRD-PARTY"):
            if flag in text:
                return flag
        return ""


def normalise_dataset(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def _acc(value: str, metric: str) -> float | None:
    """Accuracy in % from a reported value: ``top1`` as is, ``top1_err`` (error in %) as 100 - err,
    ``test_errors`` (misclassified images of the 10,000-image MNIST test set) as 100 - 100 n / 10,000."""
    if value is None or value.strip() == "":
        return None
    v = float(value)
    if metric == "top1_err":
        return round(100.0 - v, 4)
    if metric == "test_errors":
        return round(100.0 - 100.0 * v / 10_000, 4)
    return v


@dataclass
class Paper:
    id: str
    folder: Path
    spec: dict

    @property
    def title(self) -> str:
        return self.spec["title"]

    @property
    def arxiv(self) -> str:
        return str(self.spec.get("arxiv") or "")

    @property
    def presets(self) -> list[str]:
        return list(self.spec["presets"])

    @property
    def tolerance(self) -> float:
        return float(self.spec.get("tolerance", 1.0))

    @property
    def smoke_tolerance(self) -> float:
        return float(self.spec.get("smoke_tolerance", 3.0))

    def preset(self, name: str) -> dict:
        if name not in self.spec["presets"]:
            raise choices(f"preset for {self.id}", name, self.presets)
        return self.spec["presets"][name]

    def pairs(self, preset: str) -> list[str]:
        return list(self.preset(preset)["pairs"])

    def all_pairs(self) -> list[str]:
        return list(dict.fromkeys(p for name in self.presets for p in self.pairs(name)))

    def default_pair(self, preset: str) -> str:
        p = self.preset(preset)
        return p.get("default_pair") or next(iter(p["pairs"]))

    def check_pair(self, preset: str, pair: str) -> None:
        if pair not in self.pairs(preset):
            raise choices(f"pair for {self.id}/{preset}", pair, self.pairs(preset))

    def method_class(self):
        target = self.spec["method"]
        module_name, _, attr = target.partition(":")
        if not module_name.startswith("kdbench."):
            module_name = f"reproductions.{self.folder.name}.{module_name}"
        return getattr(importlib.import_module(module_name), attr)

    @functools.cached_property
    def reported(self) -> list[Reported]:
        path = self.folder / self.spec.get("reported", "reported.csv")
        if not path.exists():
            return []
        rows = []
        with open(path, newline="") as fh:
            for r in csv.DictReader(fh):
                metric = r.get("metric", "top1")
                rows.append(Reported(
                    method=r["method"], source=r["source"], table=r.get("table", ""),
                    dataset=normalise_dataset(r["dataset"]), teacher=r.get("teacher", ""),
                    student=r["student"], top1=_acc(r.get("reported_acc"), metric),
                    teacher_top1=_acc(r.get("teacher_acc"), metric),
                    student_top1=_acc(r.get("student_baseline_acc"), metric), notes=r.get("notes", ""),
                ))
        return rows

    def targets(self, preset: str) -> dict[str, Reported]:
        """pair -> the reported row this preset is checked against (``reported_source``); a pair may
        name its row with ``reported_pair`` ("<teacher>-<student>" as in reported.csv) and
        ``reported_method`` when its name or method differ from the table's."""
        p = self.preset(preset)
        source = p.get("reported_source")
        if not source:
            return {}
        out = {}
        for pair, raw in p["pairs"].items():
            raw = raw or {}
            method = raw.get("reported_method", p.get("reported_method"))
            wanted = raw.get("reported_pair", pair)
            for row in self.reported:
                if row.source.startswith(source) and (method is None or row.method == method) \
                        and row.dataset == normalise_dataset(p["dataset"]) and row.pair == wanted:
                    out[pair] = row
                    break
        return out

    @functools.cached_property
    def claims(self) -> list[Claim]:
        out = []
        for i, raw in enumerate(self.spec.get("claims") or []):
            where = f"{self.id}.claims[{i}]"
            if not isinstance(raw, dict) or set(raw) - CLAIM_KEYS or not {"claim", "preset", "better", "than"} <= set(raw):
                raise UsageError(f"malformed config: {where} needs claim, preset, better, than (optional: source, by); "
                                 f"got {sorted(raw) if isinstance(raw, dict) else raw!r}")
            sides = []
            for side in ("better", "than"):
                parts = str(raw[side]).split("/")
                if len(parts) not in (1, 3):
                    raise UsageError(f"malformed config: {where}.{side}={raw[side]!r}; use <pair> or <paper>/<preset>/<pair>")
                ref = (self.id, raw["preset"], parts[0]) if len(parts) == 1 else tuple(parts)
                if ref[0] == self.id:
                    self.check_pair(ref[1], ref[2])
                sides.append(ref)
            out.append(Claim(self.id, raw["claim"], raw.get("source", ""), sides[0], sides[1], float(raw.get("by", 0.0))))
        return out

    def summary(self) -> dict:
        return {"paper": self.id, "title": self.title, "arxiv": self.arxiv,
                "venue": self.spec.get("venue", ""), "presets": self.presets, "pairs": self.all_pairs(),
                "default_pairs": {p: self.default_pair(p) for p in self.presets}}


def reproductions_dir() -> Path:
    spec = importlib.util.find_spec("reproductions")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the 'reproductions' package is not importable; install kdbench with pip install -e .")
    return Path(next(iter(spec.submodule_search_locations)))


def parse_paper(path: Path) -> Paper:
    """One ``paper.yaml``; a file that is not valid YAML or lacks the structure every command relies
    on (metadata; presets, each with a dataset and its pairs) is one line naming it."""
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"malformed config {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(spec, dict) or not {"paper", "title", "method", "presets"} <= set(spec):
        raise UsageError(f"malformed config {path}: needs at least 'paper', 'title', 'method', 'presets'")
    unknown = set(spec) - PAPER_KEYS
    if unknown:
        raise UsageError(f"malformed config {path}: unknown key(s) {sorted(unknown)}; valid: {', '.join(sorted(PAPER_KEYS))}")
    if not isinstance(spec["paper"], str) or not isinstance(spec["method"], str) or ":" not in spec["method"]:
        raise UsageError(f"malformed config {path}: 'paper' must be a name and 'method' a <module>:<class>")
    if not isinstance(spec["presets"], dict) or not spec["presets"]:
        raise UsageError(f"malformed config {path}: 'presets' must map preset names to presets")
    for name, preset in spec["presets"].items():
        pairs = preset.get("pairs") if isinstance(preset, dict) else None
        if not isinstance(pairs, dict) or not pairs or "dataset" not in preset \
                or not all(v is None or isinstance(v, dict) for v in pairs.values()):
            raise UsageError(f"malformed config {path}: preset {name!r} needs a 'dataset' and 'pairs' mapping each "
                             "pair to its settings (or nothing)")
    return Paper(spec["paper"], Path(path).parent, spec)


@functools.lru_cache(maxsize=None)
def papers() -> dict[str, Paper]:
    out = {}
    for path in sorted(reproductions_dir().glob("*/paper.yaml")):
        paper = parse_paper(path)
        if paper.id in out:
            raise UsageError(f"malformed config {path}: paper {paper.id!r} is also {out[paper.id].folder / 'paper.yaml'}")
        out[paper.id] = paper
    return out


KD_SUFFIX = "+kd"
# The CRD table's "+KD" rows: the method's own loss plus Hinton KD with weight 1 at T = 4
# (RepDistiller scripts/run_cifar_distill.sh, e.g. CRD+KD: -r 1 -a 1 -b 0.8 --kd_T 4).
PLUS_KD = {"weight": 1.0, "temperature": 4.0}


def with_kd(paper: Paper) -> Paper:
    """``<paper>+kd``: the same recipe with the KD term added; checked against ``<METHOD>+KD`` rows."""
    spec = copy.deepcopy(paper.spec)
    spec["paper"] = paper.id + KD_SUFFIX
    spec["title"] = f"{paper.title} + KD"
    spec.setdefault("defaults", {})["kd"] = dict(PLUS_KD)
    for preset in spec["presets"].values():
        if preset.get("reported_method"):
            preset["reported_method"] += "+KD"
            preset["reported_source"] = preset.pop("plus_kd_source", preset.get("reported_source"))
    return Paper(spec["paper"], paper.folder, spec)


def get_paper(paper_id: str) -> Paper:
    registry = papers()
    if paper_id.endswith(KD_SUFFIX) and paper_id[: -len(KD_SUFFIX)] in registry:
        return with_kd(registry[paper_id[: -len(KD_SUFFIX)]])
    if paper_id not in registry:
        raise choices("paper", paper_id, [*registry, f"<paper>{KD_SUFFIX}"])
    return registry[paper_id]


def papers_and_variants(record_ids=()) -> list[Paper]:
    """Every paper, plus its ``+kd`` variant where runs of it are recorded or a preset has ``+KD`` targets."""
    out = []
    for paper in papers().values():
        out.append(paper)
        variant = with_kd(paper)
        if variant.id in record_ids or any(variant.targets(p) for p in variant.presets):
            out.append(variant)
    return out
