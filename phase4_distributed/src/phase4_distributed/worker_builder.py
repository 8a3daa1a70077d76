"""What a worker process needs beyond phase 3's ``Worker``: joining the torch.distributed world
and building its rank's part of the model. Every executor's workers call these two functions,
so tensor/pipeline parallelism plugs in here and nowhere else.

World size 1 uses phase 3's whole-model builder and no process group. Larger worlds use
``parallel_state.init_distributed`` (gloo on CPU, NCCL on GPU) and ``build_parallel_model``
(this rank's TP shard of its PP stage's layers); a pipeline stage is wrapped so that the model
runner's ``model(ids, positions, metadata)`` receives from the previous stage and sends to the
next (it returns ``None`` on every stage but the last, which then samples nothing).
"""

from __future__ import annotations

import logging

import torch

from phase1_kernels.models.llama import LlamaForCausalLM
from phase3_scheduling.engine_config import EngineConfig
from phase3_scheduling.worker.model_runner import RunnerModel
from phase3_scheduling.worker.worker import build_single_rank_model

logger = logging.getLogger(__name__)


def output_rank(tensor_parallel_size: int, pipeline_parallel_size: int) -> int:
    """The rank whose output the engine reads: TP rank 0 of the last pipeline stage."""
    return (pipeline_parallel_size - 1) * tensor_parallel_size


def init_rank_distributed(config: EngineConfig, rank: int, local_rank: int, master_addr: str,
                          master_port: int) -> None:
    """Join the world of ``tp * pp`` ranks (a no-op for one worker)."""
    parallel = config.parallel_config
    if parallel.world_size == 1:
        return
    from .parallel_state import init_distributed

    backend = "nccl" if config.device == "cuda" else "gloo"
    init_distributed(parallel.world_size, rank, master_addr, master_port, backend,
                     parallel.tensor_parallel_size, parallel.pipeline_parallel_size,
                     local_rank=local_rank)


def shutdown_rank_distributed(config: EngineConfig) -> None:
    if config.parallel_config.world_size == 1:
        return
    from .parallel_state import destroy_distributed

    destroy_distributed()


def build_rank_model(config: EngineConfig, rank: int, device: torch.device) -> RunnerModel:
    """This rank's model: the whole model for one worker, else its TP shard / PP stage."""
    parallel = config.parallel_config
    if parallel.world_size == 1:
        return build_single_rank_model(config, rank, device)
    from .model_loader import build_parallel_model

    source = config.model_config if config.model_dir is None else config.model_dir
    model = build_parallel_model(source, parallel, rank, load_format=config.load_format,
                                 dtype=config.dtype, device=device,
                                 attn_backend=config.attention_backend,
                                 kernel_impl=config.kernel_impl, seed=config.seed)
    if parallel.pipeline_parallel_size > 1:
        return PipelineStageModel(model)
    return model


class PipelineStageModel(torch.nn.Module):
    """One pipeline stage seen by the model runner as a model: ``forward`` runs the stage
    (receive, layers, send) and returns hidden states on the last stage, ``None`` elsewhere."""

    def __init__(self, model: LlamaForCausalLM):
        super().__init__()
        self.stage = model
        self.attn_backend = model.attn_backend
        self.config = model.config

    @property
    def attention_layers(self) -> list:
        return self.stage.attention_layers

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata
                ) -> torch.Tensor | None:
        from .pipeline import pipeline_forward

        return pipeline_forward(self.stage, input_ids, positions, attn_metadata)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.stage.compute_logits(hidden_states)
