"""Linear layers and the factory the model builds them through.

The model never constructs ``nn.Linear`` itself: it asks a ``LinearFactory`` for a column,
row, merged-column (gate|up), QKV or vocabulary layer. Phase 1's factory returns single-device
layers; phase 4 passes a factory that returns tensor-parallel ones (vLLM's
``ColumnParallelLinear``/``RowParallelLinear``/``QKVParallelLinear``) without touching the model.

Every parameter carries a ``weight_loader(param, loaded_weight, shard_id=None)`` that copies a
checkpoint tensor into its place, so fused layers (q|k|v, gate|up) load from HF's separate tensors.
``loaded_weight`` may be a ``LazyTensor`` (read on demand from safetensors): a loader that needs
only a slice calls ``loaded_weight.narrow(...)`` (works on tensors too) and reads just that.
Parameters are allocated uninitialised (``torch.empty``): the loader or the dummy initialiser
fills them, so building an 8B model costs no time and no second copy of memory.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..lazy_tensor import LazyTensor, materialize

logger = logging.getLogger(__name__)


def default_weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor | LazyTensor) -> None:
    """Copy the whole tensor into ``param`` (converting its dtype)."""
    if param.shape != loaded_weight.shape:
        raise ValueError(
            f"checkpoint tensor has shape {tuple(loaded_weight.shape)}, "
            f"parameter expects {tuple(param.shape)}"
        )
    param.data.copy_(materialize(loaded_weight))


def set_weight_loader(param: torch.Tensor, loader: Callable[..., None]) -> None:
    """Attach ``loader`` as ``param.weight_loader`` (read back with ``getattr``): an attribute of
    our own on the tensor, which torch's type stubs don't declare."""
    setattr(param, "weight_loader", loader)


class LinearBase(nn.Module):
    """``y = x @ W.T (+ b)`` with an uninitialised [output_size, input_size] weight."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False) if bias else None
        for param in self.parameters():
            set_weight_loader(param, self.weight_loader)

    def weight_loader(
        self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: object = None
    ) -> None:
        default_weight_loader(param, loaded_weight)

    def apply_linear(self, x: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
        """The matmul itself (``x @ W.T``, plus the bias unless ``with_bias`` is False): the one
        step a CPU pass may swap for a prepacked GEMM (``cpu_linear``); subclasses that do more
        (phase 4's all-reduce or gather) call it from their own ``forward``."""
        return F.linear(x, self.weight, self.bias if with_bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_linear(x)

    def forward_act(self, x: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``act(self(x))``: the gated MLP's gate|up projection and its activation. A kernel
        pass may fuse the two where it owns the GEMM (``gpu_linear``: SiLU·mul as the decode
        GEMV's epilogue), with the same result."""
        return act(self(x))

    def extra_repr(self) -> str:
        return f"in={self.input_size}, out={self.output_size}, bias={self.bias is not None}"


class ReplicatedLinear(LinearBase):
    """A whole linear layer on one device (no sharding)."""


class MergedLinear(LinearBase):
    """Several linear layers with the same input stacked along the output (e.g. gate|up)."""

    def __init__(self, input_size: int, output_sizes: Sequence[int], bias: bool = False):
        self.output_sizes = list(output_sizes)
        super().__init__(input_size, sum(self.output_sizes), bias)

    def shard_slice(self, shard_id: int) -> slice:
        start = sum(self.output_sizes[:shard_id])
        return slice(start, start + self.output_sizes[shard_id])

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        if shard_id is None:
            return default_weight_loader(param, loaded_weight)
        default_weight_loader(param.data[self.shard_slice(shard_id)], loaded_weight)


class QKVLinear(MergedLinear):
    """The q, k and v projections fused into one matmul; GQA gives k and v fewer heads."""

    def __init__(self, hidden_size: int, head_size: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False):
        self.head_size, self.num_heads, self.num_kv_heads = head_size, num_heads, num_kv_heads
        q, kv = num_heads * head_size, num_kv_heads * head_size
        super().__init__(hidden_size, [q, kv, kv], bias)

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        index = {"q": 0, "k": 1, "v": 2}.get(shard_id, shard_id)
        super().weight_loader(param, loaded_weight, index)


class VocabEmbedding(nn.Module):
    """Token embedding table [vocab, hidden] (phase 4 shards it over the vocabulary)."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim), requires_grad=False)
        set_weight_loader(
            self.weight, lambda param, w, shard_id=None: default_weight_loader(param, w)
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


class LinearFactory:
    """Builds every linear/embedding layer of a model; subclass it to shard them (phase 4)."""

    def column(self, input_size: int, output_size: int, bias: bool = False) -> LinearBase:
        """Output-dimension-splittable layer (tensor parallel: shard the outputs)."""
        return ReplicatedLinear(input_size, output_size, bias)

    def row(self, input_size: int, output_size: int, bias: bool = False) -> LinearBase:
        """Input-dimension-splittable layer (tensor parallel: shard the inputs, all-reduce)."""
        return ReplicatedLinear(input_size, output_size, bias)

    def merged_column(self, input_size: int, output_sizes: Sequence[int],
                      bias: bool = False) -> LinearBase:
        return MergedLinear(input_size, output_sizes, bias)

    def qkv(self, hidden_size: int, head_size: int, num_heads: int, num_kv_heads: int,
            bias: bool = False) -> LinearBase:
        return QKVLinear(hidden_size, head_size, num_heads, num_kv_heads, bias)

    def embedding(self, vocab_size: int, hidden_size: int) -> nn.Module:
        return VocabEmbedding(vocab_size, hidden_size)

    def lm_head(self, hidden_size: int, vocab_size: int) -> LinearBase:
        return ReplicatedLinear(hidden_size, vocab_size, bias=False)

    @property
    def tp_size(self) -> int:
        """How many ways heads are split (1 here); the attention layer divides heads by it."""
        return 1
