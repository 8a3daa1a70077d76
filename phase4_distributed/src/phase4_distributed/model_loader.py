"""Building one rank's part of the model: its tensor-parallel shard of the layers of its
pipeline stage, through phase 1's ``build_model`` with the TP factory and the stage's layer
range injected. The workers of every executor call ``build_parallel_model``."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from phase1_kernels.config import ModelConfig
from phase1_kernels.layers.attention import AttentionBackend
from phase1_kernels.loader import build_model
from phase1_kernels.models.llama import LlamaForCausalLM
from phase3_scheduling.config import ParallelConfig

from .group_coordinator import GroupCoordinator
from .layers.factory import TensorParallelLinearFactory
from .layers.sharding import TensorParallelError, divide, kv_heads_per_rank
from .layers.vocab_parallel_embedding import DEFAULT_VOCAB_PADDING_SIZE
from .parallel_state import RankLayout, get_tp_group, model_parallel_is_initialized
from .pipeline import pipeline_layer_range

logger = logging.getLogger(__name__)


def _check_tp(config: ModelConfig, tp: int) -> None:
    divide(config.num_attention_heads, tp, "num_attention_heads")
    kv_heads_per_rank(config.num_key_value_heads, tp)
    divide(config.intermediate_size, tp, "intermediate_size")


def valid_tensor_parallel_sizes(config: ModelConfig) -> list[int]:
    """Every TP size this model's heads and MLP split into."""
    sizes = []
    for tp in range(1, config.num_attention_heads + 1):
        try:
            _check_tp(config, tp)
        except TensorParallelError:
            continue
        sizes.append(tp)
    return sizes


def check_model_fits(config: ModelConfig, parallel_config: ParallelConfig) -> None:
    """Raise ``TensorParallelError`` / ``ParallelLayoutError`` naming the numbers if the model
    cannot be split this way (before anything is built or any process group is touched)."""
    try:
        _check_tp(config, parallel_config.tensor_parallel_size)
    except TensorParallelError as error:
        raise TensorParallelError(
            f"{error} (the model has {config.num_attention_heads} attention heads, "
            f"{config.num_key_value_heads} kv heads, intermediate_size "
            f"{config.intermediate_size}); tensor_parallel_size can be one of "
            f"{valid_tensor_parallel_sizes(config)}") from None
    pipeline_layer_range(config.num_hidden_layers, 0, parallel_config.pipeline_parallel_size)


def _tp_group_for(layout: RankLayout, tp_group: GroupCoordinator | None) -> GroupCoordinator:
    if tp_group is None:
        if layout.tensor_parallel_size == 1 and not model_parallel_is_initialized():
            return GroupCoordinator.unconnected("tp", 0, 1)
        tp_group = get_tp_group()
    if (tp_group.world_size, tp_group.rank_in_group) != (layout.tensor_parallel_size, layout.tp_rank):
        raise TensorParallelError(
            f"rank {layout.rank} should be TP rank {layout.tp_rank} of {layout.tensor_parallel_size}, "
            f"but its TP group makes it rank {tp_group.rank_in_group} of {tp_group.world_size}")
    return tp_group


def build_parallel_model(
    model: str | Path | ModelConfig,
    parallel_config: ParallelConfig,
    rank: int,
    *,
    load_format: str = "auto",
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    attn_backend: str | AttentionBackend | None = None,
    kernel_impl: str | None = None,
    seed: int = 0,
    tp_group: GroupCoordinator | None = None,
    vocab_padding_size: int = DEFAULT_VOCAB_PADDING_SIZE,
) -> LlamaForCausalLM:
    """Global ``rank``'s model: TP shard ``rank % tp`` of the layers of PP stage ``rank // tp``.

    ``model`` is a HF directory (its shard is read from safetensors) or a ``ModelConfig``
    (``load_format="dummy"``: random weights). ``tp_group`` defaults to ``get_tp_group()`` (a
    size-1 group needs no ``init_distributed``); pass ``GroupCoordinator.unconnected(...)`` to
    build a rank's shapes without processes."""
    model_dir: Path | None = None
    if isinstance(model, ModelConfig):
        config = model
    else:
        model_dir = Path(model)
        config = ModelConfig.from_pretrained(model_dir)
    check_model_fits(config, parallel_config)
    layout = RankLayout(rank, parallel_config.tensor_parallel_size,
                        parallel_config.pipeline_parallel_size)
    layer_range = pipeline_layer_range(config.num_hidden_layers, layout.pp_rank,
                                       layout.pipeline_parallel_size)
    factory = TensorParallelLinearFactory(_tp_group_for(layout, tp_group), vocab_padding_size)
    logger.info("rank %d: tp %d/%d, layers [%d, %d)", rank, layout.tp_rank,
                layout.tensor_parallel_size, *layer_range)
    return build_model(config, model_dir, load_format, dtype, device, attn_backend, factory,
                       kernel_impl, seed, layer_range)
