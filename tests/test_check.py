"""The regression check: tolerance against reported numbers, smoke references, invalid records."""
import io
import json
import shutil
from pathlib import Path

from conftest import write_record

from kdbench.check import bless_smoke, evaluate, run_check
from kdbench.results import load_all

REPO = Path(__file__).resolve().parents[1]


def rows_for(results, paper="dkd", preset="paper"):
    return {(r["preset"], r["pair"]): r for r in evaluate(load_all(results), [paper]) if r["preset"] == preset}


def test_missing_paper_runs_are_not_run_never_pass(sandbox):
    rows = rows_for(sandbox / "results")
    assert len(rows) == 11
    assert {r["status"] for r in rows.values()} == {"not run"}
    assert "76.32" in rows[("paper", "resnet32x4-resnet8x4")]["detail"]


def test_tolerance_is_one_point_below_reported(sandbox, record_factory):
    results = sandbox / "results"
    write_record(results, record_factory(best=75.40, seed=0))  # reported 76.32, tolerance 1.0
    write_record(results, record_factory(best=75.30, seed=1))  # mean 75.35 >= 75.32: ok
    assert rows_for(results)[("paper", "resnet32x4-resnet8x4")]["status"] == "ok"
    write_record(results, record_factory(best=75.00, seed=2))  # mean 75.23 < 75.32: fail
    out = io.StringIO()
    assert run_check(results, ["dkd"], out=out) == 1
    assert "FAIL dkd/paper/resnet32x4-resnet8x4: mean 75.23 of 3 seed(s) vs reported 76.32" in out.getvalue()
    assert "the paper averages 5 seeds" in out.getvalue()
    assert run_check(results, ["dkd"], out=io.StringIO(), tolerance=1.5) == 0  # configurable


def test_smoke_sized_record_cannot_pass_as_paper_scale(sandbox, record_factory):
    results = sandbox / "results"
    write_record(results, record_factory(best=99.0, dataset="synthetic-cifar100"))
    write_record(results, record_factory(pair="resnet56-resnet20", best=99.0, epochs=2))
    rows = rows_for(results)
    assert rows[("paper", "resnet32x4-resnet8x4")]["status"] == "FAIL"
    assert "dataset synthetic-cifar100" in rows[("paper", "resnet32x4-resnet8x4")]["detail"]
    assert rows[("paper", "resnet56-resnet20")]["status"] == "FAIL"
    assert "2 epochs, the preset trains 240" in rows[("paper", "resnet56-resnet20")]["detail"]


def test_smoke_reference_and_tampered_record(sandbox, record_factory, monkeypatch):
    import kdbench.check as check
    results = sandbox / "results"
    write_record(results, record_factory(preset="smoke", pair="resnet20-resnet8", best=40.0, last=39.0))
    monkeypatch.setattr(check, "SMOKE_REFERENCE", "smoke_reference.test.json")
    try:
        (ref,) = bless_smoke(results, papers=["dkd"])
        assert json.loads(ref.read_text())["smoke"]["resnet20-resnet8"]["0"]["best_top1"] == 40.0
        assert rows_for(results, preset="smoke")[("smoke", "resnet20-resnet8")]["status"] == "ok"
        write_record(results, record_factory(preset="smoke", pair="resnet20-resnet8", best=30.0))  # tampered
        out = io.StringIO()
        assert run_check(results, ["dkd"], out=out) == 1
        assert "FAIL dkd/smoke/resnet20-resnet8: seed 0: best 30.00 vs smoke reference 40.00" in out.getvalue()
    finally:
        (REPO / "reproductions" / "dkd" / "smoke_reference.test.json").unlink(missing_ok=True)


def test_committed_results_pass(tmp_path):
    """`make check` on the repository's own committed results exits 0."""
    results = tmp_path / "results"
    if (REPO / "results").exists():
        shutil.copytree(REPO / "results", results, ignore=shutil.ignore_patterns(".*.tmp"))  # a record being written
    assert run_check(results, out=io.StringIO()) == 0


def test_committed_smoke_record_tampered_fails(tmp_path):
    records = sorted((REPO / "results").glob("dkd/smoke/*/seed*.json"))
    assert records, "the DKD smoke record is committed"
    shutil.copytree(REPO / "results", tmp_path / "results", ignore=shutil.ignore_patterns(".*.tmp"))
    target = tmp_path / "results" / records[0].relative_to(REPO / "results")
    rec = json.loads(target.read_text())
    rec["best_top1"] -= 20.0
    target.write_text(json.dumps(rec))
    out = io.StringIO()
    assert run_check(tmp_path / "results", out=out) == 1
    assert f"FAIL dkd/smoke/{rec['pair']}" in out.getvalue()


def test_smoke_references_are_kept_per_device(sandbox, record_factory, monkeypatch):
    """A smoke run on a CPU with other vector kernels lands several points away: each device keeps its
    own reference; a record is held to its device's, or, for a device never blessed, the closest."""
    import kdbench.check as check
    results = sandbox / "results"
    avx2, avx512 = "cpu:x86_64 AVX2 (2 threads)", "cpu:x86_64 AVX512 (2 threads)"
    monkeypatch.setattr(check, "SMOKE_REFERENCE", "smoke_reference.test.json")
    try:
        write_record(results, {**record_factory(preset="smoke", pair="resnet20-resnet8", best=40.0), "device": avx2})
        bless_smoke(results, papers=["dkd"])
        write_record(results, {**record_factory(preset="smoke", pair="resnet20-resnet8", best=47.0), "device": avx512})
        (ref,) = bless_smoke(results, papers=["dkd"])
        refs = json.loads(ref.read_text())["smoke"]["resnet20-resnet8"]["0"]
        assert [(r["device"], r["best_top1"]) for r in refs] == [(avx2, 40.0), (avx512, 47.0)]
        (ref,) = bless_smoke(results, papers=["dkd"])  # blessing again replaces this device's, keeps the other
        assert len(json.loads(ref.read_text())["smoke"]["resnet20-resnet8"]["0"]) == 2

        def status(best, device):
            write_record(results, {**record_factory(preset="smoke", pair="resnet20-resnet8", best=best), "device": device})
            row = rows_for(results, preset="smoke")[("smoke", "resnet20-resnet8")]
            return row["status"], row["detail"]
        assert status(46.0, avx512)[0] == "ok"
        assert status(41.0, avx512)[0] == "FAIL"  # within 5 of the AVX2 reference, but not its own device's
        assert status(41.0, avx2)[0] == "ok"
        ok, detail = status(43.0, "cpu:aarch64 DEFAULT (4 threads)")  # never blessed: the closest reference
        assert ok == "ok" and "vs smoke reference 40.00 of " + avx2 + ", none blessed for cpu:aarch64" in detail
        assert status(30.0, "cpu:aarch64 DEFAULT (4 threads)")[0] == "FAIL"
    finally:
        (REPO / "reproductions" / "dkd" / "smoke_reference.test.json").unlink(missing_ok=True)
