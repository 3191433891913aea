"""CRD: NCE loss, memory bank, negative sampling and the method, against hand-derived values."""
import math

import pytest
import torch

from kdbench.distiller import DataInfo, StepContext
from kdbench.models import create_model
from reproductions.crd.loss import ContrastMemory, Embed, nce_loss, sample_negatives
from reproductions.crd.method import CRD


def test_nce_loss_hand_value():
    # K = 1 negative, N = 2 samples: noise mass K/N = 0.5; P+ = P- = 0.5
    scores = torch.tensor([[0.5, 0.5]])
    expected = -(math.log(0.5 / (1.0 + 1e-7)) + math.log(0.5 / (1.0 + 1e-7)))
    assert nce_loss(scores, n_data=2).item() == pytest.approx(expected, rel=1e-6)
    # a confident positive and a negligible negative give a small loss
    assert nce_loss(torch.tensor([[100.0, 1e-6]]), n_data=2).item() < 0.01


def test_embed_is_unit_norm():
    out = Embed(7, 4)(torch.randn(3, 7))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_memory_scores_normaliser_and_momentum_update():
    torch.manual_seed(0)
    mem = ContrastMemory(dim=4, n_data=6, k=2, temperature=0.5, momentum=0.5)
    v1, v2 = Embed(4, 4)(torch.randn(2, 4)).detach(), Embed(4, 4)(torch.randn(2, 4)).detach()
    idx = torch.tensor([1, 4])
    cidx = torch.tensor([[1, 0, 2], [4, 3, 5]])
    old_v1, old_v2 = mem.memory_v1.clone(), mem.memory_v2.clone()
    out_v1, out_v2 = mem(v1, v2, idx, cidx)
    raw_v1 = torch.exp(torch.einsum("bkd,bd->bk", old_v2[cidx], v1) / 0.5)
    z1 = raw_v1.mean() * 6
    torch.testing.assert_close(out_v1, raw_v1 / z1)
    torch.testing.assert_close(mem.z[0], z1)
    expected = 0.5 * old_v1[idx] + 0.5 * v1
    torch.testing.assert_close(mem.memory_v1[idx], expected / expected.norm(dim=1, keepdim=True))
    torch.testing.assert_close(mem.memory_v1[[0, 2, 3, 5]], old_v1[[0, 2, 3, 5]])  # other rows untouched
    z_before = mem.z.clone()
    mem(v1, v2, idx, cidx)
    torch.testing.assert_close(mem.z, z_before)  # Z is fixed after the first batch


def test_negatives_are_other_classes_without_replacement_when_possible():
    torch.manual_seed(0)
    labels = torch.arange(40) % 4  # 10 per class, 30 of other classes
    targets = torch.tensor([0, 3])
    neg = sample_negatives(labels, targets, k=30)
    assert neg.shape == (2, 30)
    assert (labels[neg] != targets[:, None]).all()
    assert all(len(set(row.tolist())) == 30 for row in neg)  # all 30 distinct: without replacement
    neg = sample_negatives(labels, targets, k=50)  # more than exist: with replacement
    assert neg.shape == (2, 50) and (labels[neg] != targets[:, None]).all()


def test_crd_method_terms_gradients_and_extra_parameters():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    student, teacher = create_model("resnet8"), create_model("resnet14")
    labels_all = torch.arange(20) % 100
    data = DataInfo(num_samples=20, num_classes=100, image_size=32, train_labels=labels_all)
    m = CRD(student, teacher, data, nce_k=8)
    assert m.num_extra_parameters() == (64 * 128 + 128) * 2  # both embeddings (resnet8/14 pool to 64)
    idx = torch.tensor([0, 5, 7])
    x = torch.randn(3, 3, 32, 32)
    logits, losses = m(x, labels_all[idx], StepContext(epoch=1, epochs=1, indices=idx))
    assert set(losses) == {"loss_ce", "loss_crd"} and torch.isfinite(losses["loss_crd"])
    sum(losses.values()).backward()
    assert m.embed_s.linear.weight.grad is not None and m.embed_t.linear.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    assert "memory.memory_v1" in m.state_dict() and "train_labels" not in m.state_dict()
