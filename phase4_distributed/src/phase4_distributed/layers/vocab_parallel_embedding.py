"""The vocabulary split over tensor-parallel ranks (vLLM's names).

The vocabulary is padded to a multiple of ``padding_size * tp`` so it always splits into equal
shards of whole ``padding_size`` blocks; rank r owns rows ``[r * V_p / tp, (r + 1) * V_p / tp)``.
Padding rows are zero and never looked up; their logits are cut off.

- ``VocabParallelEmbedding``: each rank looks up the ids in its range (others give zero rows)
  and one all-reduce assembles the embeddings.
- ``ParallelLMHead``: each rank computes the logits of its vocabulary slice and one all-gather
  concatenates them (tied to the embedding, it shares the embedding's shard).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from phase1_kernels.layers.linear import set_weight_loader

from ..group_coordinator import GroupCoordinator
from .sharding import load_shard, round_up

DEFAULT_VOCAB_PADDING_SIZE = 64


class VocabParallelEmbedding(nn.Module):
    """Embedding table rows ``[vocab_start, vocab_end)`` of the padded vocabulary."""

    def __init__(self, num_embeddings: int, embedding_dim: int, tp_group: GroupCoordinator,
                 padding_size: int = DEFAULT_VOCAB_PADDING_SIZE):
        super().__init__()
        self.tp_group = tp_group
        self.tp_rank, self.tp_size = tp_group.rank_in_group, tp_group.world_size
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.num_embeddings_padded = round_up(num_embeddings, padding_size * self.tp_size)
        self.num_embeddings_per_partition = self.num_embeddings_padded // self.tp_size
        self.vocab_start = self.tp_rank * self.num_embeddings_per_partition
        self.vocab_end = self.vocab_start + self.num_embeddings_per_partition
        self.weight = nn.Parameter(torch.empty(self.num_embeddings_per_partition, embedding_dim),
                                   requires_grad=False)
        set_weight_loader(self.weight, self.weight_loader)

    @property
    def num_real_rows(self) -> int:
        """Rows of this shard that are real tokens (the rest is padding)."""
        return max(0, min(self.vocab_end, self.num_embeddings) - self.vocab_start)

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        if loaded_weight.shape[0] != self.num_embeddings:
            raise ValueError(f"checkpoint tensor has {loaded_weight.shape[0]} rows, "
                             f"the vocabulary has {self.num_embeddings}")
        param.data.zero_()
        rows = self.num_real_rows
        if rows:
            load_shard(param.data[:rows], loaded_weight, 0, self.vocab_start, rows)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        outside = (input_ids < self.vocab_start) | (input_ids >= self.vocab_end)
        local = (input_ids - self.vocab_start).masked_fill(outside, 0)
        embeddings = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0)
        return self.tp_group.all_reduce(embeddings)

    def extra_repr(self) -> str:
        return (f"vocab={self.num_embeddings}, padded={self.num_embeddings_padded}, "
                f"rows=[{self.vocab_start}, {self.vocab_end}), dim={self.embedding_dim}")


class ParallelLMHead(VocabParallelEmbedding):
    """``logits = all_gather_r(h @ W_r.T)[..., :vocab]``."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = F.linear(hidden_states, self.weight)
        logits = self.tp_group.all_gather(logits, dim=-1)
        return logits[..., : self.num_embeddings]
