"""How sizes split over tensor-parallel ranks, and the error when they do not."""

from __future__ import annotations

import torch

from phase1_kernels.layers.linear import default_weight_loader
from phase1_kernels.lazy_tensor import LazyTensor


class TensorParallelError(ValueError):
    """A model dimension does not split over the tensor-parallel size."""


def divide(size: int, tp_size: int, what: str) -> int:
    """``size / tp_size``, or a ``TensorParallelError`` that names both numbers."""
    if size % tp_size:
        raise TensorParallelError(
            f"{what} ({size}) is not divisible by tensor_parallel_size ({tp_size})")
    return size // tp_size


def kv_heads_per_rank(num_kv_heads: int, tp_size: int) -> tuple[int, int]:
    """``(kv heads each rank holds, ranks sharing each kv head)``: split when there are at
    least as many kv heads as ranks, else each head is replicated on ``tp / kv_heads`` ranks."""
    if num_kv_heads >= tp_size:
        return divide(num_kv_heads, tp_size, "num_key_value_heads"), 1
    if tp_size % num_kv_heads:
        raise TensorParallelError(
            f"tensor_parallel_size ({tp_size}) exceeds num_key_value_heads ({num_kv_heads}) "
            f"and is not a multiple of it, so the kv heads cannot be replicated evenly")
    return 1, tp_size // num_kv_heads


def round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def load_shard(param: torch.Tensor, loaded: torch.Tensor | LazyTensor, dim: int, start: int,
               length: int, name: str = "weight") -> None:
    """Copy ``loaded[start:start + length]`` along ``dim`` into ``param``, reading only that
    slice from the checkpoint."""
    if length and start + length > loaded.shape[dim]:
        raise ValueError(f"{name} shard [{start}, {start + length}) of dim {dim} is outside the "
                         f"checkpoint tensor's shape {tuple(loaded.shape)}")
    if param.dim() != len(loaded.shape):
        raise ValueError(f"checkpoint tensor has shape {tuple(loaded.shape)}, "
                         f"parameter expects {tuple(param.shape)}")
    default_weight_loader(param, loaded.narrow(dim, start, length))
