"""Regression check: recorded results against reported numbers and smoke references.

* paper-scale presets (those with ``reported_source``): the mean over seeds of the statistic the
  paper reports must be at most ``tolerance`` points (paper.yaml, default 1.0) below the reported
  number; a pair with no recorded run is listed as "not run", never as a pass;
* smoke presets: each recorded smoke result must lie within ``smoke_tolerance`` points of the
  reference blessed into ``reproductions/<paper>/smoke_reference.json`` for the same device. A smoke
  run is a few epochs on tiny data, where the rounding of the CPU's kernels (AVX2 or AVX-512, see
  ``evaluate.device_name``) moves the result by several points; so a reference is kept per device,
  and a record from a device without one must lie within the tolerance of one of the others;
* claims (``claims`` in paper.yaml): where a paper's numbers cannot be verified, its claims are
  relations between runs ("Tf-KD_self >= the normally trained model + 1 point"), evaluated on the
  means over seeds of valid records of both sides; a side without records is "not run";
* any record whose dataset or epochs disagree with its preset is invalid (a smoke-sized or
  synthetic-data run can never pass as a paper-scale result).
"""
from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path

from tabulate import tabulate

from . import results
from .checkpoint import atomic_write_json
from .config import resolve
from .registry import Paper, get_paper, normalise_dataset, papers_and_variants

SMOKE_REFERENCE = "smoke_reference.json"


def group_records(records: list[dict]) -> dict[tuple, list[dict]]:
    out = defaultdict(list)
    for r in records:
        out[(r["paper"], r["preset"], r["pair"])].append(r)
    return out


def record_problem(paper: Paper, rec: dict) -> str | None:
    """Why a record cannot stand for its preset, or None."""
    if rec["preset"] not in paper.presets:
        return f"unknown preset {rec['preset']!r}"
    preset = paper.preset(rec["preset"])
    if normalise_dataset(rec["dataset"]) != normalise_dataset(preset["dataset"]):
        return f"dataset {rec['dataset']} is not the preset's {preset['dataset']}"
    if rec["pair"] not in preset["pairs"]:
        return f"pair {rec['pair']!r} is not in preset {rec['preset']!r}"
    expected = resolve(paper.id, paper.spec, rec["preset"], rec["pair"], rec["seed"]).train.epochs
    if rec["epochs"] != expected:
        return f"{rec['epochs']} epochs, the preset trains {expected}"
    return None


def evaluate(records: list[dict], paper_ids=None, tolerance: float | None = None) -> list[dict]:
    rows = []
    groups = group_records(records)
    for paper in papers_and_variants({r["paper"] for r in records}):
        if paper_ids and paper.id not in paper_ids:
            continue
        ref_path = paper.folder / SMOKE_REFERENCE
        smoke_refs = results.read_json(ref_path, "smoke reference") if ref_path.exists() else {}
        for preset in paper.presets:
            targets = paper.targets(preset)
            for pair in paper.pairs(preset):
                recs = groups.get((paper.id, preset, pair), [])
                bad = [(r, record_problem(paper, r)) for r in recs]
                bad = [(r, why) for r, why in bad if why]
                base = {"paper": paper.id, "preset": preset, "pair": pair}
                if bad:
                    rows.append({**base, "status": "FAIL", "detail": f"invalid record {bad[0][0]['_path']}: {bad[0][1]}"})
                    continue
                if pair in targets:
                    target = targets[pair]
                    if not recs:
                        rows.append({**base, "status": "not run", "detail": f"reported {target.top1:.2f} ({target.source})"})
                        continue
                    values = [r["reported_top1"] for r in recs]
                    mean = statistics.fmean(values)
                    tol = paper.tolerance if tolerance is None else tolerance
                    ok = mean >= target.top1 - tol
                    wanted = int(paper.spec.get("seeds", 1))
                    rows.append({**base, "status": "ok" if ok else "FAIL",
                                 "detail": f"mean {mean:.2f} of {len(values)} seed(s) vs reported {target.top1:.2f} "
                                           f"(tolerance {tol:.1f} below; {target.source})"
                                           + (f"; the paper averages {wanted} seeds" if len(values) < wanted else "")})
                elif pair in smoke_refs.get(preset, {}):
                    refs = smoke_refs[preset][pair]
                    if not recs:
                        rows.append({**base, "status": "not run", "detail": "smoke reference exists, no record"})
                    for r in recs:
                        rows.append({**base, **compare_smoke(r, smoke_references(refs, r["seed"]),
                                                             paper.smoke_tolerance)})
    return rows


def smoke_references(refs: dict, seed) -> list[dict]:
    """The blessed references of one seed: one per device (a single entry in older files)."""
    ref = refs.get(str(seed))
    return [] if ref is None else ref if isinstance(ref, list) else [ref]


def compare_smoke(rec: dict, refs: list[dict], tolerance: float) -> dict:
    """``status`` and ``detail`` of a smoke record against the reference of its own device, or, if its
    device has none, the closest of the others."""
    if not refs:
        return {"status": "no reference", "detail": f"seed {rec['seed']}"}
    same = [ref for ref in refs if ref.get("device") == rec.get("device")]
    ref = min(same or refs, key=lambda ref: abs(rec["best_top1"] - ref["best_top1"]))
    where = "" if same else f" of {ref.get('device')}, none blessed for {rec.get('device')}"
    ok = abs(rec["best_top1"] - ref["best_top1"]) <= tolerance
    return {"status": "ok" if ok else "FAIL",
            "detail": f"seed {rec['seed']}: best {rec['best_top1']:.2f} vs smoke reference {ref['best_top1']:.2f}"
                      f"{where} (±{tolerance:.1f})"}


def evaluate_claims(records: list[dict], paper_ids=None, papers: list[Paper] | None = None) -> list[dict]:
    groups, rows = group_records(records), []
    for paper in papers if papers is not None else papers_and_variants({r["paper"] for r in records}):
        if paper_ids and paper.id not in paper_ids:
            continue
        for claim in paper.claims:
            means, missing = [], []
            for ref in (claim.better, claim.than):
                owner = paper if ref[0] == paper.id else get_paper(ref[0])
                recs = [r for r in groups.get(ref, []) if not record_problem(owner, r)]
                if recs:
                    means.append(statistics.fmean(r["reported_top1"] for r in recs))
                else:
                    missing.append("/".join(ref))
            base = {"paper": paper.id, "preset": claim.better[1],
                    "pair": f"claim: {claim.better[2]} >= {claim.than[2]} {claim.by:+.1f}"}
            if missing:
                rows.append({**base, "status": "not run", "detail": f"{claim.claim}; no valid record of {', '.join(missing)}"})
                continue
            margin = means[0] - means[1]
            rows.append({**base, "status": "ok" if margin >= claim.by else "FAIL",
                         "detail": f"{claim.claim}: {means[0]:.2f} vs {means[1]:.2f} ({margin:+.2f}, claimed "
                                   f">= {claim.by:+.1f}; {claim.source or 'paper'})"})
    return rows


def run_check(results_dir: Path | None = None, papers=None, out=sys.stdout, tolerance: float | None = None) -> int:
    records = results.load_all(results_dir)
    rows = evaluate(records, papers, tolerance) + evaluate_claims(records, papers)
    print(tabulate([[r["status"], r["paper"], r["preset"], r["pair"], r["detail"]] for r in rows],
                   headers=["status", "paper", "preset", "pair", "detail"], tablefmt="github"), file=out)
    failed = [r for r in rows if r["status"] == "FAIL"]
    counts = defaultdict(int)
    for r in rows:
        counts[r["status"]] += 1
    print("summary: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), file=out)
    for r in failed:
        print(f"FAIL {r['paper']}/{r['preset']}/{r['pair']}: {r['detail']}", file=out)
    return 1 if failed else 0


def bless_smoke(results_dir: Path | None = None, papers=None) -> list[Path]:
    """Store the recorded smoke-preset results as each paper's smoke reference for their device,
    keeping the references blessed on other devices."""
    written = []
    by_paper = defaultdict(list)
    for r in results.load_all(results_dir):
        paper = get_paper(r["paper"])
        if paper.targets(r["preset"]) or (papers and r["paper"] not in papers) or record_problem(paper, r):
            continue
        by_paper[r["paper"]].append(r)
    for paper_id, recs in sorted(by_paper.items()):
        path = get_paper(paper_id).folder / SMOKE_REFERENCE
        refs = results.read_json(path, "smoke reference") if path.exists() else {}
        for r in recs:
            seeds = refs.setdefault(r["preset"], {}).setdefault(r["pair"], {})
            new = {k: r[k] for k in ("best_top1", "last_top1", "git_commit", "device", "torch", "dataset", "epochs")}
            others = [ref for ref in smoke_references(seeds, r["seed"]) if ref.get("device") != r["device"]]
            seeds[str(r["seed"])] = [*others, new] if others else new
        atomic_write_json(refs, path)
        written.append(path)
    return written
