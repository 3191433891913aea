"""Bucilă, Caruana, Niculescu-Mizil 2006 (model compression with MUNGE): MUNGE on hand-made data
(nearest neighbours, swap probability, the sd rule, nominal swaps, seeds), the tabular data and its
loader, the mimic net, the loss, the method, and the smoke reproduction through the CLI."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.data import DATASETS, make_loaders
from kdbench.data.tabular import TabularLoader, load_tabular, split_indices, standardise, train_statistics
from kdbench.distiller import DataInfo, StepContext
from kdbench.errors import UsageError
from kdbench.evaluate import count_macs, profile
from kdbench.models import create_model
from kdbench.registry import get_paper
from reproductions.bucila.loss import rmse, squared_error
from reproductions.bucila.method import MUNGECompression
from reproductions.bucila.munge import munge, munge_step, nearest_other, scale01, unscale01

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread_module")
CONT = np.zeros(1, bool)


# ------------------------------------------------------------------------------------------- MUNGE
def test_nearest_neighbour_excludes_itself_breaks_ties_low_and_counts_nominal_mismatches():
    x = np.array([[0.0, 0.0], [0.1, 0.0], [0.5, 0.5], [0.0, 0.1]])
    cont = np.zeros(2, bool)
    assert [nearest_other(x, i, cont) for i in range(4)] == [1, 0, 1, 0]  # 0: 1 and 3 tie at 0.1 -> 1
    # attribute 1 nominal: a differing value counts 1, like a full-range continuous difference
    x = np.array([[0.0, 1.0], [0.9, 1.0], [0.0, 2.0], [0.5, 2.0]])
    assert nearest_other(x, 0, np.array([False, True])) == 1  # 0.81 < 1 (nominal mismatch with 2)
    assert nearest_other(x, 0, np.array([False, False])) == 1  # continuous: 0.81 < 1 as well
    assert nearest_other(x, 2, np.array([False, True])) == 3  # 0.25 beats 0.81 + 1


def test_exact_swaps_by_hand():
    """p = 1 and s = inf (sd 0): every attribute of e and its neighbour swaps exactly, and later
    examples search the altered copy. 1-D, four examples, derived by hand:
    [0, 1, 3, 10] -i=0 (nn 1)-> [1, 0, 3, 10] -i=1 (nn 0)-> [0, 1, 3, 10] -i=2 (nn 1)-> [0, 3, 1, 10]
    -i=3 (nn 1: |10-3| < |10-1|)-> [0, 10, 1, 3]."""
    x = np.array([[0.0], [1.0], [3.0], [10.0]])
    out = munge(x, 1, p=1.0, s=math.inf, seed=0)
    assert out[:, 0].tolist() == [0.0, 10.0, 1.0, 3.0]
    # two passes: each starts again from the training set, so both give the same result here
    assert munge(x, 2, p=1.0, s=math.inf, seed=3)[:, 0].tolist() == [0.0, 10.0, 1.0, 3.0] * 2


def test_p_zero_copies_the_training_set_k_times():
    x = np.random.default_rng(0).random((4, 3))
    out = munge(x, 3, p=0.0, s=10.0, seed=1)
    assert out.shape == (12, 3) and np.array_equal(out, np.tile(x, (3, 1)))  # row r * N + i is example i


def _reference_munge(x, k, p, s, nominal, seed):
    """An independent, loop-by-loop reading of the procedure, drawing in the documented order."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        t = [list(row) for row in x]
        for i in range(len(t)):
            best, j = math.inf, None
            for m in range(len(t)):
                if m != i:
                    d = sum((1.0 if t[i][a] != t[m][a] else 0.0) if nominal[a] else (t[i][a] - t[m][a]) ** 2
                            for a in range(len(t[i])))
                    if d < best:
                        best, j = d, m
            u = [rng.random() for _ in t[i]]
            a_old, b_old = list(t[i]), list(t[j])
            cont = [a for a in range(len(u)) if u[a] < p and not nominal[a]]
            for a in cont:
                t[i][a] = b_old[a] + abs(a_old[a] - b_old[a]) / s * rng.standard_normal()
            for a in cont:
                t[j][a] = a_old[a] + abs(a_old[a] - b_old[a]) / s * rng.standard_normal()
            for a in range(len(u)):
                if u[a] < p and nominal[a]:
                    t[i][a], t[j][a] = b_old[a], a_old[a]
        out += t
    return np.array(out)


def test_fixed_seed_four_examples_match_a_loop_by_loop_reference():
    x = np.array([[0.10, 0.20, 0.0], [0.15, 0.25, 1.0], [0.90, 0.80, 1.0], [0.70, 0.95, 2.0]])
    nominal = np.array([False, False, True])
    out = munge(x, 2, p=0.5, s=10.0, nominal=nominal, seed=42)
    np.testing.assert_allclose(out, _reference_munge(x, 2, 0.5, 10.0, nominal, 42), rtol=0, atol=1e-12)
    assert np.array_equal(out, munge(x, 2, p=0.5, s=10.0, nominal=nominal, seed=42))  # a seed fixes it
    assert not np.array_equal(out, munge(x, 2, p=0.5, s=10.0, nominal=nominal, seed=43))
    assert set(out[:, 2]) <= {0.0, 1.0, 2.0}  # nominal values are only ever swapped


def test_swap_probability():
    """One step on 4 examples with 4000 attributes, all values distinct: the altered attributes are
    exactly the returned mask, and their share is p (binomial, 5 sigma)."""
    rng = np.random.default_rng(0)
    f = 4000
    x = np.stack([rng.random(f), rng.random(f) + 10, rng.random(f) + 20, rng.random(f) + 30])
    for p in (0.2, 0.5, 0.9):
        t = x.copy()
        j, mask = munge_step(t, 0, p, 10.0, np.zeros(f, bool), np.random.default_rng(1))
        assert j == 1
        assert np.array_equal(t[0] != x[0], mask) and np.array_equal(t[1] != x[1], mask)
        assert np.array_equal(t[2:], x[2:])  # only e and its neighbour change
        assert abs(mask.mean() - p) < 5 * math.sqrt(p * (1 - p) / f)


def test_sd_rule():
    """e_a <- N(e'_a, |e_a - e'_a| / s), e'_a <- N(e_a, same sd): standardised residuals are N(0, 1)."""
    rng = np.random.default_rng(0)
    f, s = 20000, 10.0
    a = rng.random(f)
    b = a + rng.uniform(0.05, 1.0, f) * rng.choice([-1, 1], f)  # varying |a - b|
    x = np.stack([a, b, a + 50, a + 100])
    t = x.copy()
    j, mask = munge_step(t, 0, 1.0, s, np.zeros(f, bool), np.random.default_rng(2))
    assert j == 1 and mask.all()
    sd = np.abs(a - b) / s
    for new, centre in ((t[0], b), (t[1], a)):
        z = (new - centre) / sd
        assert abs(z.mean()) < 5 / math.sqrt(f) and abs(z.std() - 1) < 0.03
    # and in absolute terms for one pair: e = 0, e' = 1, s = 10 -> N(1, 0.1) and N(0, 0.1)
    x = np.stack([np.zeros(f), np.ones(f), np.full(f, 5.0), np.full(f, 9.0)])
    munge_step(x, 0, 1.0, 10.0, np.zeros(f, bool), np.random.default_rng(3))
    assert abs(x[0].mean() - 1) < 0.005 and abs(x[0].std() - 0.1) < 0.003
    assert abs(x[1].mean()) < 0.005 and abs(x[1].std() - 0.1) < 0.003


def test_munge_rejects_bad_arguments():
    x = np.zeros((4, 2))
    for kwargs in ({"p": 1.5}, {"p": -0.1}, {"s": 0.0}):
        with pytest.raises(ValueError):
            munge(x, 1, **kwargs)
    with pytest.raises(ValueError):
        munge(x, 0)
    with pytest.raises(ValueError):
        munge(np.zeros((1, 2)), 1)


def test_scaling_to_unit_interval_round_trips():
    x = np.array([[1.0, 5.0, 7.0], [3.0, 5.0, -1.0]])
    lo, hi = x.min(0), x.max(0)
    u = scale01(x, lo, hi)
    assert u.tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]  # a constant attribute maps to 0
    np.testing.assert_allclose(unscale01(u, lo, hi), x)


# -------------------------------------------------------------------------------- tabular data
def test_breast_cancer_split_and_registration():
    info = DATASETS["breast-cancer"]
    assert (info["num_classes"], info["channels"], info["image_size"], info["layout"]) == (2, 30, 1, "tabular")
    x_tr, y_tr = load_tabular("breast-cancer", True)
    x_te, y_te = load_tabular("breast-cancer", False)
    assert x_tr.shape == (456, 30) and x_te.shape == (113, 30)
    assert np.bincount(y_tr).tolist() == [170, 286] and np.bincount(y_te).tolist() == [42, 71]  # stratified
    tr, te = split_indices(np.r_[y_tr, y_te], 0.2, 0)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 569
    # the split is fixed: the same positions every time
    assert np.array_equal(load_tabular("breast-cancer", False)[0], x_te)


def test_standardisation_uses_training_statistics():
    x_tr, _ = load_tabular("breast-cancer", True)
    z = standardise("breast-cancer", x_tr)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-10)
    mean, std = train_statistics("breast-cancer")
    x_te, _ = load_tabular("breast-cancer", False)
    np.testing.assert_allclose(standardise("breast-cancer", x_te), (x_te - mean) / std)


def test_loader_interface():
    x = torch.arange(20, dtype=torch.float32).view(10, 2)
    y = torch.arange(10) % 2
    loader = TabularLoader(x, y, batch_size=4, device="cpu", train=True, seed=3)
    assert (len(loader), loader.num_samples, loader.num_views) == (3, 10, 1)
    assert torch.equal(loader.labels, y)
    loader.set_epoch(1)
    batches = list(loader.batches())
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    idx = torch.cat([b[2] for b in batches])
    assert sorted(idx.tolist()) == list(range(10))  # every sample once per epoch
    for xb, yb, ib, vb in batches:
        assert xb.dtype == torch.float32 and xb.shape[1] == 2 and yb.dtype == torch.int64
        assert torch.equal(xb, x[ib]) and torch.equal(yb, y[ib]) and torch.equal(vb, torch.zeros_like(ib))
    assert torch.equal(idx, torch.cat([b[2] for b in loader.batches()]))  # iterating does not advance the epoch
    loader.set_epoch(2)
    assert not torch.equal(idx, torch.cat([b[2] for b in loader.batches()]))
    assert [len(b) for b in loader] == [3, 3, 3]  # plain iteration: (x, labels, indices)
    dropped = TabularLoader(x, y, batch_size=4, device="cpu", train=True, drop_last=True)
    assert len(dropped) == 2 and sum(len(b[0]) for b in dropped.batches()) == 8
    test = TabularLoader(x, y, batch_size=4, device="cpu", train=False)
    assert [b[3] for b in test.batches()] == [None] * 3
    assert torch.equal(torch.cat([b[2] for b in test.batches()]), torch.arange(10))  # file order
    shard = [TabularLoader(x, y, batch_size=4, device="cpu", train=True, seed=3, shard=(r, 2)) for r in (0, 1)]
    for s in shard:
        s.set_epoch(1)
    halves = [torch.cat([b[2] for b in s.batches()]) for s in shard]
    assert sorted(torch.cat(halves).tolist()) == list(range(10))
    with pytest.raises(ValueError):
        TabularLoader(x.long(), y, batch_size=4, device="cpu", train=True)
    with pytest.raises(ValueError):
        TabularLoader(x, y[:5], batch_size=4, device="cpu", train=True)


def test_make_loaders_for_breast_cancer():
    train, test, classes = make_loaders("breast-cancer", batch_size=32, device="cpu", seed=0, test_batch_size=64)
    assert classes == 2 and train.num_samples == 456 and test.num_samples == 113 and len(train) == 15
    xb, _, _, vb = next(iter(train.batches()))
    assert xb.shape == (32, 30) and vb.tolist() == [0] * 32
    np.testing.assert_allclose(train.features.mean(0).numpy(), 0, atol=1e-5)
    with pytest.raises(ValueError):
        make_loaders("breast-cancer", batch_size=8, device="cpu", augment={"flip": False})
    with pytest.raises(ValueError):
        make_loaders("breast-cancer", batch_size=8, device="cpu", subset={"train_per_class": 4})


# ------------------------------------------------------------------------------ model and loss
def test_mimic_net_shape_and_profile():
    model = create_model("tabular_mlp30_h8", num_classes=2)
    assert sum(p.numel() for p in model.parameters()) == 30 * 8 + 8 + 8 * 2 + 2
    x = torch.randn(5, 30)
    assert torch.equal(model(x), model(x.view(5, 30, 1, 1)))  # the profiling code's 1 x 1 "image"
    out = model.forward_features(x)
    assert torch.equal(out.logits, model(x)) and out.feats[0].shape == (5, 8)
    assert torch.allclose(out.feats[0], torch.tanh(out.preact_feats[0])) and model.feature_channels() == [8]
    assert count_macs(model, (1, model.input_channels, 1, 1)) == 30 * 8 + 8 * 2
    assert profile(model, image_size=1, iters=2, warmup=1)["macs"] == 256


def test_squared_error_by_hand():
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])  # probabilities (.5, .5) and (.25, .75)
    targets = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    # row 1: (.5 - 1)^2 + (.5 - 0)^2 = .5; row 2: 0 -> mean over 4 entries = .125
    assert squared_error(logits, targets).item() == pytest.approx(0.125)
    # binary: equals the mean of (p_1 - t_1)^2, the square of the paper's RMSE
    p1 = torch.tensor([0.5, 0.75])
    assert squared_error(logits, targets).item() == pytest.approx(((p1 - targets[:, 1]) ** 2).mean().item())
    assert rmse(torch.tensor([[0.5, 0.5], [0.25, 0.75]]), torch.tensor([0, 1])) == pytest.approx(math.sqrt(0.15625))
    with pytest.raises(ValueError):
        squared_error(logits, targets[:, :1])


# ------------------------------------------------------------------------------------ method
def _data(loader) -> DataInfo:
    return DataInfo(num_samples=loader.num_samples, num_classes=2, image_size=1, train_labels=loader.labels,
                    dataset="breast-cancer", train_inputs=loader.raw_inputs)


def test_method_builds_the_transfer_set_and_steps():
    train, _, _ = make_loaders("breast-cancer", batch_size=16, device="cpu", seed=0)
    torch.manual_seed(0)
    student = create_model("tabular_mlp30_h8", num_classes=2)
    m = MUNGECompression(student, None, data=_data(train), size_multiplier=2, n_estimators=10, seed=5)
    n = train.num_samples
    assert m.synthetic_inputs.shape == (2 * n, 30) and m.synthetic_targets.shape == (2 * n, 2)
    assert torch.allclose(m.synthetic_targets.sum(1), torch.ones(2 * n)) and m.real_targets.shape == (n, 2)
    assert m.summary["synthetic_examples"] == 2 * n and 80 < m.summary["ensemble_test_top1"] <= 100
    # the synthetic rows stay close to the data: standardised values of the same order as the real ones
    assert m.synthetic_inputs.abs().max() < 3 * train.features.abs().max()
    assert m.synthetic_rows(torch.tensor([3, 7])).tolist() == [3, 7, 3 + n, 7 + n]
    train.set_epoch(1)
    x, y, idx, views = next(iter(train.batches()))
    logits, losses = m(x, y, StepContext(epoch=1, epochs=1, indices=idx, views=views))
    assert logits.shape == (16, 2) and set(losses) == {"loss_mse"}
    rows = m.synthetic_rows(idx)
    expected = squared_error(student(torch.cat([x, m.synthetic_inputs[rows]])),
                             torch.cat([m.real_targets[idx], m.synthetic_targets[rows]]))
    assert losses["loss_mse"].item() == pytest.approx(expected.item())
    # the same seed gives the same transfer set; no state is saved with the checkpoint
    again = MUNGECompression(create_model("tabular_mlp30_h8", num_classes=2), None, data=_data(train),
                             size_multiplier=2, n_estimators=10, seed=5)
    assert torch.equal(again.synthetic_inputs, m.synthetic_inputs)
    assert torch.equal(again.synthetic_targets, m.synthetic_targets)
    assert not any(k.startswith("synthetic") or k == "real_targets" for k in m.state_dict())


def test_real_only_student_and_misuse():
    train, _, _ = make_loaders("breast-cancer", batch_size=16, device="cpu", seed=0)
    student = create_model("tabular_mlp30_h8", num_classes=2)
    m = MUNGECompression(student, None, data=_data(train), transfer="none")
    assert not hasattr(m, "synthetic_inputs")
    x, y, idx, _ = next(iter(train.batches()))
    _, losses = m(x, y, StepContext(epoch=1, epochs=1, indices=idx))
    onehot = torch.nn.functional.one_hot(y, 2).float()
    assert losses["loss_mse"].item() == pytest.approx(squared_error(student(x), onehot).item())
    with pytest.raises(UsageError):
        MUNGECompression(student, None, data=_data(train), transfer="random")
    with pytest.raises(UsageError):
        MUNGECompression(student, create_model("tabular_mlp30_h8"), data=_data(train))
    with pytest.raises(UsageError, match="tabular dataset"):  # an image run has no attributes to MUNGE
        MUNGECompression(student, None, data=DataInfo(10, 2, 1, torch.zeros(10, dtype=torch.long),
                                                      dataset="synthetic-cifar10"))
    with pytest.raises(UsageError):
        MUNGECompression(student, None, data=_data(train), ensemble="svm", n_estimators=5)


def test_paper_config():
    paper = get_paper("bucila")
    assert paper.presets == ["paper", "smoke"] and paper.reported == []
    assert paper.pairs("paper") == ["munge-tabular_mlp30_h8", "tabular_mlp30_h8"]
    (claim,) = paper.claims
    assert claim.better == ("bucila", "paper", "munge-tabular_mlp30_h8") and claim.than[2] == "tabular_mlp30_h8"
    method = paper.spec["defaults"]["method"]
    assert (method["swap_prob"], method["local_variance"]) == (0.5, 10.0)


# ---------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_smoke_preset_through_the_cli(sandbox):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # sandbox: KDBENCH_DATA/RUNS/RESULTS in tmp
    cmd = [sys.executable, "-m", "kdbench", "reproduce", "bucila", "--preset", "smoke", "--pair", "all",
           "--latency-iters", "3"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    print(f"smoke, both pairs: {time.perf_counter() - start:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[bucila] random_forest (30 trees" in done.stdout and "1368 synthetic examples (k=3" in done.stdout
    recs = {}
    for pair in ("munge-tabular_mlp30_h8", "tabular_mlp30_h8"):
        (path,) = (sandbox / "results").glob(f"bucila/smoke/{pair}/seed0.json")
        recs[pair] = json.loads(path.read_text())
    for pair, rec in recs.items():
        assert rec["dataset"] == "breast-cancer" and rec["method"] == "MUNGECompression" and rec["epochs"] == 5
        assert rec["teacher"] is None and rec["teacher_info"] == {"source": "none"}
        assert rec["statistic"] == "last" and rec["reported_top1"] == rec["last_top1"]
        assert rec["params"]["student"] == 266 and rec["macs"] == 256
        assert rec["best_top1"] > 85.0  # 63 % is the majority class
    assert recs["munge-tabular_mlp30_h8"]["config"]["method"]["transfer"] == "munge"
    assert recs["tabular_mlp30_h8"]["config"]["method"]["transfer"] == "none"
    log = [json.loads(line) for line in
           (sandbox / "runs/bucila/smoke/munge-tabular_mlp30_h8/seed0/log-main.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3, 4, 5] and "loss_mse" in log[0]
    assert log[-1]["loss_mse"] < log[0]["loss_mse"]


def test_the_loader_hands_the_method_the_raw_training_attributes():
    from kdbench.data.tabular import load_tabular, standardise
    train, test, _ = make_loaders("breast-cancer", batch_size=16, device="cpu", seed=0)
    x, y = load_tabular("breast-cancer", True)
    assert train.raw_inputs.dtype == torch.float64 and torch.equal(train.raw_inputs, torch.from_numpy(x))
    assert torch.allclose(train.features, torch.from_numpy(standardise("breast-cancer", x)).float())
    assert torch.equal(train.labels, torch.from_numpy(y))
