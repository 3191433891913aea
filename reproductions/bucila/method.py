"""Model compression with MUNGE (Bucilă, Caruana, Niculescu-Mizil, KDD 2006) as a kdbench method.

The teacher is an ensemble of trees, not an ``nn.Module``: it is trained here, once, when the method
is built (the run's pair has no zoo teacher), and its only use is to label the transfer set, so
nothing of it is needed during training but its predictions:

1. the ensemble (scikit-learn, CPU) is fitted to the real training split;
2. MUNGE (``munge.py``) makes ``size_multiplier`` altered copies of the training split, on the
   attributes linearly scaled to [0, 1] with the training minima and maxima;
3. the ensemble's class probabilities for the real and the synthetic examples are computed once and
   kept as buffers on the run's device, with the synthetic examples standardised like the loader's;
4. each training step takes the loader's batch of real examples together with the synthetic
   examples made from them (rows ``i + r * N`` for every real index i and every pass r, so an epoch
   visits every real and every synthetic example once), and the student regresses the ensemble's
   probabilities with the squared error (``loss.py``).

With ``transfer: none`` the same net is trained on the real examples alone, with the same loss and
the one-hot labels as targets (the paper's comparison: the net trained on the original data).

Where the training attributes come from: the run's ``DataInfo`` (``train_inputs``: the training split's
raw attributes as the loader holds them, ``dataset``: its name, for the loader's standardisation).
Nothing is drawn from the test split but the ensemble's test accuracy, which is printed for the log
and used nowhere.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kdbench.data.tabular import TABULAR, load_tabular, standardise
from kdbench.distiller import DataInfo, Distiller
from kdbench.errors import UsageError

from .loss import squared_error
from .munge import munge, scale01, unscale01

TRANSFERS = ("munge", "none")
ENSEMBLES = ("random_forest", "bagged_trees", "gradient_boosting")


def make_ensemble(kind: str, n_estimators: int, seed: int):
    """An unfitted scikit-learn ensemble of ``n_estimators`` trees (one CPU thread, seeded)."""
    from sklearn.ensemble import BaggingClassifier, GradientBoostingClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier
    if kind == "random_forest":
        return RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=1)
    if kind == "bagged_trees":
        return BaggingClassifier(DecisionTreeClassifier(), n_estimators=n_estimators, random_state=seed, n_jobs=1)
    if kind == "gradient_boosting":
        return GradientBoostingClassifier(n_estimators=n_estimators, random_state=seed)
    raise UsageError(f"unknown ensemble {kind!r}; choose from: {', '.join(ENSEMBLES)}")


def class_probabilities(model, x: np.ndarray, num_classes: int) -> np.ndarray:
    """``N x num_classes`` probabilities (columns by class id, zero for a class the model never saw)."""
    out = np.zeros((len(x), num_classes))
    out[:, model.classes_] = model.predict_proba(x)
    return out


class MUNGECompression(Distiller):
    """The student trained on the real training split plus its MUNGE transfer set, all labelled by an
    ensemble trained here (``transfer: munge``), or on the real split alone (``transfer: none``)."""

    def __init__(self, student, teacher=None, data: DataInfo | None = None, transfer: str = "munge",
                 size_multiplier: int = 10, swap_prob: float = 0.5,
                 local_variance: float = 10.0, ensemble: str = "random_forest", n_estimators: int = 500,
                 seed: int | None = None):
        if teacher is not None:
            raise UsageError("bucila's teacher is the tree ensemble the method trains; the pair names no zoo teacher")
        super().__init__(student, None)
        if transfer not in TRANSFERS:
            raise UsageError(f"unknown transfer {transfer!r}; choose from: {', '.join(TRANSFERS)}")
        if data is None or data.dataset not in TABULAR or data.train_inputs is None:
            raise UsageError(f"MUNGECompression needs a tabular dataset ({', '.join(sorted(TABULAR))}) and its "
                             f"training attributes; got {getattr(data, 'dataset', None)!r}")
        self.transfer, self.num_classes = transfer, data.num_classes
        dataset = data.dataset
        x_raw, y = data.train_inputs.cpu().double().numpy(), data.train_labels.cpu().numpy()
        self.num_real = len(y)
        self.summary: dict = {"transfer": transfer, "real_examples": self.num_real}
        if transfer == "none":
            return
        if seed is None:  # kdbench seeds NumPy's global generator with the run's seed just before this
            seed = int(np.random.randint(0, 2**31 - 1))
        self.size_multiplier = int(size_multiplier)
        model = make_ensemble(ensemble, n_estimators, seed).fit(x_raw, y)
        lo, hi = x_raw.min(0), x_raw.max(0)
        synthetic = unscale01(munge(scale01(x_raw, lo, hi), self.size_multiplier, swap_prob, local_variance,
                                    seed=seed), lo, hi)
        probs_real = class_probabilities(model, x_raw, self.num_classes)
        probs_syn = class_probabilities(model, synthetic, self.num_classes)
        self.register_buffer("real_targets", torch.from_numpy(probs_real).float(), persistent=False)
        self.register_buffer("synthetic_inputs", torch.from_numpy(standardise(dataset, synthetic)).float(),
                             persistent=False)
        self.register_buffer("synthetic_targets", torch.from_numpy(probs_syn).float(), persistent=False)
        x_test, y_test = load_tabular(dataset, False)
        test_acc = 100.0 * float((class_probabilities(model, x_test, self.num_classes).argmax(1) == y_test).mean())
        self.summary.update(ensemble=ensemble, n_estimators=n_estimators, seed=seed,
                            synthetic_examples=len(synthetic), ensemble_test_top1=test_acc,
                            synthetic_positive_rate=float(probs_syn.argmax(1).mean()))
        print(f"[bucila] {ensemble} ({n_estimators} trees, seed {seed}) fitted to {self.num_real} examples; "
              f"MUNGE: {len(synthetic)} synthetic examples (k={self.size_multiplier}, p={swap_prob}, "
              f"s={local_variance}); ensemble test top1 {test_acc:.2f} (logged only)", flush=True)

    def synthetic_rows(self, indices: torch.Tensor) -> torch.Tensor:
        """Rows of the transfer set made from real examples ``indices``: ``i + r * N`` for every pass r."""
        passes = torch.arange(self.size_multiplier, device=indices.device)
        return (indices[None, :] + self.num_real * passes[:, None]).flatten()

    def forward(self, x, labels, ctx):
        if self.transfer == "none":
            logits = self.student(x)
            return logits, {"loss_mse": squared_error(logits, F.one_hot(labels, self.num_classes).float())}
        if ctx is None or ctx.indices is None:
            raise ValueError("MUNGECompression needs the dataset indices of the batch (ctx.indices)")
        rows = self.synthetic_rows(ctx.indices)
        inputs = torch.cat([x, self.synthetic_inputs[rows].to(x.dtype)])
        targets = torch.cat([self.real_targets[ctx.indices], self.synthetic_targets[rows]])
        logits = self.student(inputs)
        return logits[: len(x)], {"loss_mse": squared_error(logits, targets)}
