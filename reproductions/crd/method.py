import torch
import torch.nn.functional as F

from kdbench.distiller import DataInfo, Distiller

from .loss import ContrastMemory, Embed, nce_loss, sample_negatives


class CRD(Distiller):
    """CE + weight * (NCE(student anchor) + NCE(teacher anchor)) on the pooled features (feats[-1]).

    Extra trainable parts: the two embeddings (both optimised, as in the official trainable list);
    the memory banks are buffers (momentum-updated, checkpointed, not counted as parameters)."""

    supports_data_parallel = False  # the memory bank would be updated per process shard

    def __init__(self, student, teacher, data: DataInfo, ce_weight: float = 1.0, weight: float = 0.8,
                 feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07, nce_m: float = 0.5):
        super().__init__(student, teacher)
        self.ce_weight, self.weight, self.nce_k = ce_weight, weight, nce_k
        self.embed_s = Embed(student.feature_channels()[-1], feat_dim)
        self.embed_t = Embed(teacher.feature_channels()[-1], feat_dim)
        self.memory = ContrastMemory(feat_dim, data.num_samples, nce_k, nce_t, nce_m)
        self.register_buffer("train_labels", data.train_labels.clone(), persistent=False)

    def forward(self, images, labels, ctx):
        s = self.student.forward_features(images)
        t = self.teacher_features(images)
        # column 0: the sample itself (mode 'exact'), then K negatives from other classes
        contrast_idx = torch.cat([ctx.indices[:, None], sample_negatives(self.train_labels, labels, self.nce_k)], 1)
        v1, v2 = self.embed_s(s.feats[-1].float()), self.embed_t(t.feats[-1].float())
        out_v1, out_v2 = self.memory(v1, v2, ctx.indices, contrast_idx)
        n = self.memory.n_data
        return s.logits, {
            "loss_ce": self.ce_weight * F.cross_entropy(s.logits, labels),
            "loss_crd": self.weight * (nce_loss(out_v1, n) + nce_loss(out_v2, n)),
        }
