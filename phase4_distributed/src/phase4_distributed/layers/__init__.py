"""Tensor-parallel layers with vLLM's names, and the factory that puts them into phase 1's model."""

from .factory import TensorParallelLinearFactory
from .linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from .sharding import TensorParallelError
from .vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

__all__ = [
    "ColumnParallelLinear", "MergedColumnParallelLinear", "QKVParallelLinear", "RowParallelLinear",
    "VocabParallelEmbedding", "ParallelLMHead", "TensorParallelLinearFactory", "TensorParallelError",
]
