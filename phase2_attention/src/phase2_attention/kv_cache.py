"""Sizing and allocating the paged KV cache.

On a GPU the cache takes what is left of ``gpu_memory_utilization`` x total memory after the
weights and the peak activations of a profiled forward pass at the largest batch the engine will
run (nano-vllm/vLLM's approach). On the CPU there is nothing to profile against: the size is
configured in GiB. Either way the tensors are allocated once, one per layer, and bound to the
attention layers (``layer.kv_cache``).
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import torch
from torch import nn

from phase1_kernels.config import ModelConfig
from phase1_kernels.layers.attention import Attention, AttentionMetadata

logger = logging.getLogger(__name__)


class KVCacheModel(Protocol):
    """What sizing and binding the cache use of a model: phase 1's ``LlamaForCausalLM``, or a
    model shaped like it (phase 4's pipeline stage wraps one)."""

    config: ModelConfig

    @property
    def attention_layers(self) -> list[Attention]: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass
class CacheConfig:
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_gib: float = 1.0
    num_blocks: int | None = None  # overrides sizing (tests, benchmarks)
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.cpu_kv_cache_gib <= 0:
            raise ValueError(f"cpu_kv_cache_gib must be > 0, got {self.cpu_kv_cache_gib}")
        if self.num_blocks is not None and self.num_blocks < 2:
            raise ValueError(f"num_blocks must be >= 2 (block 0 is reserved), got {self.num_blocks}")


def bytes_per_block(model: KVCacheModel, block_size: int) -> int:
    """K and V of ``block_size`` tokens across every layer."""
    layers = model.attention_layers
    attn = layers[0]
    itemsize = next(model.parameters()).element_size()
    return 2 * block_size * attn.num_kv_heads * attn.head_size * itemsize * len(layers)


@torch.inference_mode()
def profile_peak_memory(model: KVCacheModel, num_tokens: int) -> int:
    """Peak GPU bytes of one forward over ``num_tokens`` tokens (no cache), weights included."""
    device = next(model.parameters()).device
    torch.cuda.synchronize(device)
    gc.collect()  # tensors only garbage cycles still hold would count as this engine's
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    ids = torch.zeros(num_tokens, dtype=torch.long, device=device)
    positions = torch.arange(num_tokens, device=device) % model.config.max_position_embeddings
    chunk = min(num_tokens, 2048)  # profile as sequences of <= 2048 tokens each
    lens = [chunk] * (num_tokens // chunk) + ([num_tokens % chunk] if num_tokens % chunk else [])
    metadata = AttentionMetadata.build(lens, device=device)
    from .backends.sdpa import SdpaBackend

    saved = [layer.backend for layer in model.attention_layers]
    for layer in model.attention_layers:  # paged backends need a cache; we have none yet
        layer.backend = SdpaBackend()
    hidden = model(ids, positions, metadata)
    model.compute_logits(hidden[-256:])  # the sampler needs logits of at most a batch's rows
    torch.cuda.synchronize(device)
    del hidden
    for layer, backend in zip(model.attention_layers, saved):
        layer.backend = backend
    return torch.cuda.max_memory_allocated(device)


def available_kv_cache_bytes(model: KVCacheModel, config: CacheConfig,
                             max_num_batched_tokens: int = 2048) -> int:
    """Bytes this process can give the KV cache: on GPU what ``gpu_memory_utilization`` leaves
    after the weights and a profiled forward at the largest step; on CPU the configured GiB."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return int(config.cpu_kv_cache_gib * (1 << 30))
    free, total = torch.cuda.mem_get_info(device)
    peak = profile_peak_memory(model, max_num_batched_tokens)
    others = total - free - torch.cuda.memory_reserved(device)  # other processes' memory
    return int(total * config.gpu_memory_utilization - peak - max(others, 0))


def num_blocks_for(budget_bytes: int, per_block: int) -> int:
    num_blocks = int(budget_bytes // per_block)
    if num_blocks < 2:
        raise RuntimeError(
            f"no memory left for the KV cache: budget {budget_bytes / 2**30:.2f} GiB, one block "
            f"needs {per_block / 2**20:.2f} MiB; raise gpu_memory_utilization / cpu_kv_cache_gib")
    return num_blocks


def determine_num_blocks(model: KVCacheModel, config: CacheConfig,
                         max_num_batched_tokens: int = 2048) -> int:
    per_block = bytes_per_block(model, config.block_size)
    if config.num_blocks is not None:
        logger.info("KV cache: %d blocks of %d tokens as configured (%.2f GiB)", config.num_blocks,
                    config.block_size, config.num_blocks * per_block / 2**30)
        return config.num_blocks
    budget = available_kv_cache_bytes(model, config, max_num_batched_tokens)
    num_blocks = num_blocks_for(budget, per_block)
    logger.info("KV cache: %d blocks of %d tokens, %.2f GiB (%.2f MiB per block)", num_blocks,
                config.block_size, num_blocks * per_block / 2**30, per_block / 2**20)
    return num_blocks


def allocate_kv_cache(model: KVCacheModel, num_blocks: int, block_size: int) -> list[torch.Tensor]:
    """One [2, num_blocks, block_size, Hk, D] tensor per attention layer the model holds (a
    pipeline stage holds only its own layers), bound to that layer."""
    param = next(model.parameters())
    caches = []
    for layer in model.attention_layers:
        cache = torch.zeros(2, num_blocks, block_size, layer.num_kv_heads, layer.head_size,
                            dtype=param.dtype, device=param.device)
        layer.kv_cache = cache
        caches.append(cache)
    return caches


def release_kv_cache(model: KVCacheModel) -> None:
    for layer in model.attention_layers:
        layer.kv_cache = None
