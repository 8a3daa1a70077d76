"""The factory phase 1's model builds its layers through, returning tensor-parallel layers for
one rank of a TP group. Passed to ``phase1_kernels.loader.build_model(linear_factory=...)``; the
model itself is unchanged."""

from __future__ import annotations

from typing import Sequence

from phase1_kernels.layers.linear import LinearFactory

from ..group_coordinator import GroupCoordinator
from .linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from .vocab_parallel_embedding import (
    DEFAULT_VOCAB_PADDING_SIZE,
    ParallelLMHead,
    VocabParallelEmbedding,
)


class TensorParallelLinearFactory(LinearFactory):
    """Every linear/embedding layer sharded over ``tp_group``."""

    def __init__(self, tp_group: GroupCoordinator,
                 vocab_padding_size: int = DEFAULT_VOCAB_PADDING_SIZE):
        self.tp_group = tp_group
        self.vocab_padding_size = vocab_padding_size

    def column(self, input_size: int, output_size: int, bias: bool = False):
        return ColumnParallelLinear(input_size, output_size, self.tp_group, bias)

    def row(self, input_size: int, output_size: int, bias: bool = False):
        return RowParallelLinear(input_size, output_size, self.tp_group, bias)

    def merged_column(self, input_size: int, output_sizes: Sequence[int], bias: bool = False):
        return MergedColumnParallelLinear(input_size, output_sizes, self.tp_group, bias)

    def qkv(self, hidden_size: int, head_size: int, num_heads: int, num_kv_heads: int,
            bias: bool = False):
        return QKVParallelLinear(hidden_size, head_size, num_heads, num_kv_heads, self.tp_group, bias)

    def embedding(self, vocab_size: int, hidden_size: int):
        return VocabParallelEmbedding(vocab_size, hidden_size, self.tp_group, self.vocab_padding_size)

    def lm_head(self, hidden_size: int, vocab_size: int):
        return ParallelLMHead(vocab_size, hidden_size, self.tp_group, self.vocab_padding_size)

    @property
    def tp_size(self) -> int:
        return self.tp_group.world_size
