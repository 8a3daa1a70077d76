"""Tensor-parallel linear layers (vLLM's names). Each rank holds one shard of the weight and
its ``weight_loader`` reads only that shard from the checkpoint.

- ``ColumnParallelLinear``: ``W`` [out, in] split along ``out``; each rank computes its slice of
  the outputs, no communication (``gather_output=True`` all-gathers them).
- ``MergedColumnParallelLinear``: several column layers stacked (gate|up); each part is split
  separately so rank r holds gate_r|up_r and the activation stays local.
- ``QKVParallelLinear``: q, k, v split by heads; when TP exceeds the kv heads each kv head is
  replicated on ``tp / num_kv_heads`` ranks.
- ``RowParallelLinear``: ``W`` split along ``in``; the input is already split (the output of a
  column layer), each rank computes a partial sum and one all-reduce adds them.
"""

from __future__ import annotations

from typing import Sequence

import torch

from phase1_kernels.layers.linear import LinearBase, default_weight_loader

from ..group_coordinator import GroupCoordinator
from .sharding import divide, kv_heads_per_rank, load_shard


class ColumnParallelLinear(LinearBase):
    """``y_r = x @ W_r.T``: rank r's ``output_size / tp`` outputs."""

    def __init__(self, input_size: int, output_size: int, tp_group: GroupCoordinator,
                 bias: bool = False, gather_output: bool = False, what: str = "output_size"):
        self.tp_group = tp_group
        self.tp_rank, self.tp_size = tp_group.rank_in_group, tp_group.world_size
        self.output_size_per_partition = divide(output_size, self.tp_size, what)
        super().__init__(input_size, self.output_size_per_partition, bias)
        self.full_output_size, self.gather_output = output_size, gather_output

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        size = self.output_size_per_partition
        load_shard(param, loaded_weight, 0, self.tp_rank * size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.apply_linear(x)
        return self.tp_group.all_gather(y, dim=-1) if self.gather_output else y

    def extra_repr(self) -> str:
        return (f"in={self.input_size}, out={self.full_output_size}, "
                f"out_per_rank={self.output_size_per_partition}, tp={self.tp_size}")


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Parts ``output_sizes`` stacked along the output; rank r holds part_i[r] for every i."""

    def __init__(self, input_size: int, output_sizes: Sequence[int], tp_group: GroupCoordinator,
                 bias: bool = False, what: str = "intermediate_size"):
        tp = tp_group.world_size
        self.output_sizes = list(output_sizes)
        self.local_sizes = [divide(size, tp, what) for size in self.output_sizes]
        super().__init__(input_size, sum(self.output_sizes), tp_group, bias, what=what)

    def _part(self, index: int) -> tuple[int, int, int]:
        """(offset in this rank's parameter, offset in the checkpoint part, length)."""
        local = self.local_sizes[index]
        return sum(self.local_sizes[:index]), self.tp_rank * local, local

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        """``shard_id`` i: the checkpoint tensor is part i; None: all parts already stacked."""
        if shard_id is None:
            for index in range(len(self.output_sizes)):
                offset, start, length = self._part(index)
                load_shard(param.data.narrow(0, offset, length), loaded_weight, 0,
                           sum(self.output_sizes[:index]) + start, length)
            return
        offset, start, length = self._part(shard_id)
        load_shard(param.data.narrow(0, offset, length), loaded_weight, 0, start, length)


class QKVParallelLinear(MergedColumnParallelLinear):
    """Rank r: q heads ``[r*h, (r+1)*h)`` and the kv heads those query heads attend to."""

    def __init__(self, hidden_size: int, head_size: int, num_heads: int, num_kv_heads: int,
                 tp_group: GroupCoordinator, bias: bool = False):
        tp = tp_group.world_size
        self.head_size, self.total_num_heads, self.total_num_kv_heads = head_size, num_heads, num_kv_heads
        self.num_heads = divide(num_heads, tp, "num_attention_heads")
        self.num_kv_heads, self.num_kv_head_replicas = kv_heads_per_rank(num_kv_heads, tp)
        q, kv = self.num_heads * head_size, self.num_kv_heads * head_size
        # as merged parts of per-rank size q | kv | kv (the replicated kv counted tp times)
        super().__init__(hidden_size, [q * tp, kv * tp, kv * tp], tp_group, bias,
                         what="num_attention_heads x head_dim")

    def _part(self, index: int) -> tuple[int, int, int]:
        offset, _, length = super()._part(index)
        if index == 0:
            return offset, self.tp_rank * length, length
        kv_head = (self.tp_rank // self.num_kv_head_replicas) * self.num_kv_heads
        return offset, kv_head * self.head_size, length

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        if shard_id is None:
            raise ValueError("QKVParallelLinear loads q, k and v from separate checkpoint tensors")
        super().weight_loader(param, loaded_weight, {"q": 0, "k": 1, "v": 2}.get(shard_id, shard_id))


class RowParallelLinear(LinearBase):
    """``y = sum_r x_r @ W_r.T (+ b)``: rank r holds ``input_size / tp`` input columns and gets
    the matching slice of the input; the all-reduce sums the partial products."""

    def __init__(self, input_size: int, output_size: int, tp_group: GroupCoordinator,
                 bias: bool = False, reduce_results: bool = True, what: str = "input_size"):
        self.tp_group = tp_group
        self.tp_rank, self.tp_size = tp_group.rank_in_group, tp_group.world_size
        self.input_size_per_partition = divide(input_size, self.tp_size, what)
        super().__init__(self.input_size_per_partition, output_size, bias)
        self.full_input_size, self.reduce_results = input_size, reduce_results

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        if param.dim() == 1:  # the bias is whole on every rank, added once after the sum
            return default_weight_loader(param, loaded_weight)
        size = self.input_size_per_partition
        load_shard(param, loaded_weight, 1, self.tp_rank * size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.apply_linear(x, with_bias=False)
        if self.reduce_results:
            y = self.tp_group.all_reduce(y)
        if self.bias is None or not (self.reduce_results or self.tp_rank == 0):
            return y  # unreduced partial sums: only rank 0's carries the bias
        return y + self.bias

    def extra_repr(self) -> str:
        return (f"in={self.full_input_size}, in_per_rank={self.input_size_per_partition}, "
                f"out={self.output_size}, tp={self.tp_size}")
