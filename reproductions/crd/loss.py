"""Tian, Krishnan, Isola 2020, "Contrastive Representation Distillation" (CRD, arXiv 1910.10699).

The objective as the official code (HobbitLong/RepDistiller @b84f547, ``crd/``) computes it: student
and teacher pooled features are embedded (linear + L2 norm) into 128-d; each embedding is scored
against K+1 entries of a momentum memory bank of the *other* network's embeddings (the sample
itself first, then K negatives from other classes), ``exp(<m, v> / T) / Z`` with Z fixed from the
first batch; the NCE loss of the student anchor and of the teacher anchor are summed.
"""
import math

import torch
from torch import nn

EPS = 1e-7  # official crd/criterion.py


def nce_loss(scores: torch.Tensor, n_data: int) -> torch.Tensor:
    """NCE loss of (B, K+1) scores whose column 0 is the positive (the official ``ContrastLoss``):
    -[sum_b log(P+ / (P+ + K/N + eps)) + sum_{b,k} log((K/N) / (P- + K/N + eps))] / B."""
    batch, k = scores.shape[0], scores.shape[1] - 1
    noise = k / float(n_data)
    pos, neg = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + EPS))
    log_d0 = torch.log(noise / (neg + noise + EPS))
    return -(log_d1.sum() + log_d0.sum()) / batch


class Embed(nn.Module):
    """Linear projection followed by L2 normalisation (official ``Embed``; keys ``linear.*``)."""

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        x = self.linear(x.flatten(1))
        return x / x.pow(2).sum(1, keepdim=True).sqrt()


class ContrastMemory(nn.Module):
    """Two memory banks (student ``memory_v1``, teacher ``memory_v2``) of unit embeddings, one row
    per training sample, updated with momentum at the positive rows after scoring."""

    def __init__(self, dim: int, n_data: int, k: int, temperature: float = 0.07, momentum: float = 0.5):
        super().__init__()
        self.k, self.temperature, self.momentum, self.n_data = k, temperature, momentum, n_data
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_v1", torch.rand(n_data, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_v2", torch.rand(n_data, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.full((2,), -1.0))  # normalisers of v1 and v2 scores, set once

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, idx: torch.Tensor, contrast_idx: torch.Tensor):
        """Scores of the student embeddings ``v1`` against teacher memory and of the teacher
        embeddings ``v2`` against student memory, each (B, K+1)."""
        b, d = v1.shape
        w1 = self.memory_v1[contrast_idx.reshape(-1)].view(b, -1, d)
        w2 = self.memory_v2[contrast_idx.reshape(-1)].view(b, -1, d)
        out_v2 = torch.exp(torch.bmm(w1, v2.unsqueeze(2)).squeeze(2) / self.temperature)
        out_v1 = torch.exp(torch.bmm(w2, v1.unsqueeze(2)).squeeze(2) / self.temperature)
        with torch.no_grad():
            if self.z[0] < 0:  # Z = mean score x N, from the first batch (official behaviour)
                self.z[0] = out_v1.mean() * self.n_data
            if self.z[1] < 0:
                self.z[1] = out_v2.mean() * self.n_data
        out_v1, out_v2 = out_v1 / self.z[0], out_v2 / self.z[1]
        with torch.no_grad():
            for memory, v in ((self.memory_v1, v1), (self.memory_v2, v2)):
                pos = memory[idx] * self.momentum + v.detach().float() * (1 - self.momentum)
                memory.index_copy_(0, idx, pos / pos.pow(2).sum(1, keepdim=True).sqrt())
        return out_v1, out_v2


def sample_negatives(labels_all: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """K indices per sample drawn uniformly from the samples of *other* classes; without
    replacement when enough exist, with replacement otherwise (the official ``mode='exact'``)."""
    other = labels_all[None, :] != targets[:, None]  # (B, N)
    if k <= int(other.sum(1).min()):
        keys = torch.rand(other.shape, device=labels_all.device).masked_fill_(~other, 2.0)
        return keys.topk(k, dim=1, largest=False).indices
    return torch.multinomial(other.float(), k, replacement=True)
