"""LLaMA's building blocks; each kernel-backed layer picks its implementation once (CustomOp)."""

from .activation import SiluAndMul
from .attention import (
    Attention,
    AttentionBackend,
    AttentionMetadata,
    NaiveAttentionBackend,
    get_backend,
    register_backend,
    registered_backends,
)
from .layernorm import RMSNorm
from .linear import LinearFactory, MergedLinear, QKVLinear, ReplicatedLinear, VocabEmbedding
from .rotary_embedding import RotaryEmbedding

__all__ = [
    "Attention", "AttentionBackend", "AttentionMetadata", "NaiveAttentionBackend", "get_backend",
    "register_backend", "registered_backends", "RMSNorm", "LinearFactory", "MergedLinear",
    "QKVLinear", "ReplicatedLinear", "VocabEmbedding", "RotaryEmbedding", "SiluAndMul",
]
