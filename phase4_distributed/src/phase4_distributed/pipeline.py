"""Pipeline parallelism: which layers a stage owns, and one stage's part of a forward pass.

Stages hold contiguous layer ranges. Layers that do not split evenly go one each to the stages
before the last, from the second-to-last backwards (vLLM's choice): the last stage also runs the
norm, the LM head and the sampler.
"""

from __future__ import annotations

import torch

from phase1_kernels.layers.attention import AttentionMetadata
from phase1_kernels.models.llama import LlamaForCausalLM
from phase1_kernels.models.pipeline import IntermediateTensors

from .group_coordinator import GroupCoordinator
from .parallel_state import ParallelLayoutError, get_pp_group


def pipeline_layer_range(num_layers: int, pp_rank: int, pp_size: int) -> tuple[int, int]:
    """``(start, end)`` of the layers stage ``pp_rank`` of ``pp_size`` owns."""
    if not 1 <= pp_size <= num_layers:
        raise ParallelLayoutError(
            f"pipeline_parallel_size ({pp_size}) must be between 1 and the number of layers "
            f"({num_layers}): every stage needs at least one layer")
    if not 0 <= pp_rank < pp_size:
        raise ParallelLayoutError(f"pp_rank {pp_rank} is outside [0, {pp_size})")
    sizes = [num_layers // pp_size] * pp_size
    extra = num_layers % pp_size
    for stage in range(pp_size - 2, pp_size - 2 - extra, -1):
        sizes[stage] += 1
    start = sum(sizes[:pp_rank])
    return start, start + sizes[pp_rank]


def pipeline_forward(model: LlamaForCausalLM, input_ids: torch.Tensor, positions: torch.Tensor,
                     attn_metadata: AttentionMetadata, pp_group: GroupCoordinator | None = None
                     ) -> torch.Tensor | None:
    """Run this rank's stage: receive (hidden, residual) from the previous stage unless first,
    run its layers, send them on unless last. Returns the hidden states on the last stage,
    ``None`` on the others. Every stage must be called with the same batch."""
    pp = pp_group or get_pp_group()
    intermediate = None
    if not pp.is_first_rank:
        intermediate = IntermediateTensors(**pp.recv_tensor_dict())
    out = model(input_ids, positions, attn_metadata, intermediate_tensors=intermediate)
    if pp.is_last_rank:
        return out
    pp.send_tensor_dict(out.as_dict())
    return None
