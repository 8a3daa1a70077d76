"""``EngineConfig`` (vLLM's ``VllmConfig``): everything resolved once, by the engine, before any
worker exists — the model's shape read from config.json (no weights loaded), the cache,
scheduler, parallel and device settings. Workers receive it (msgpack-encoded when they live in
another process) and never decide any of it themselves."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import msgspec
import torch

from phase1_kernels import ModelConfig
from phase1_kernels.loader import resolve_dtype
from phase2_attention import CacheConfig, best_paged_backend

from .config import EngineArgs, ParallelConfig, SchedulerConfig

logger = logging.getLogger(__name__)
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@dataclass
class EngineConfig:
    model_config: ModelConfig
    model_dir: str | None  # None: dummy weights from hf_config alone
    cache_config: CacheConfig
    scheduler_config: SchedulerConfig
    parallel_config: ParallelConfig
    device: str  # "cpu" | "cuda"
    dtype: str  # resolved: "float32" | "float16" | "bfloat16"
    load_format: str
    attention_backend: str
    kernel_impl: str | None
    enforce_eager: bool
    seed: int
    tokenizer_dir: str | None
    cuda_graph_sizes: list[int] | None = None  # None: the default sizes for max_num_seqs
    mixed_cuda_graph_max_tokens: int = 0  # 0: mixed steps run eagerly

    @property
    def max_model_len(self) -> int:
        return self.scheduler_config.max_model_len

    def with_num_blocks(self, num_blocks: int) -> "EngineConfig":
        return replace(self, cache_config=replace(self.cache_config, num_blocks=num_blocks))


def resolve_engine_config(args: EngineArgs) -> EngineConfig:
    """Read the model's config, pick device, dtype and backend, validate the limits."""
    from shared.model_registry import resolve_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device_type = torch.device(device).type
    if args.load_format == "dummy" and args.hf_config:
        model_config, model_dir = ModelConfig.from_dict(args.hf_config), None
    else:
        model_dir = resolve_model(args.model)
        model_config = ModelConfig.from_pretrained(model_dir)
    scheduler = args.scheduler_config(model_config.max_position_embeddings, device_type,
                                      _device_memory_gib(device))
    backend = args.attention_backend or best_paged_backend(device_type, args.block_size)
    tokenizer_dir = args.tokenizer or (str(model_dir) if model_dir is not None else None)
    config = EngineConfig(
        model_config=model_config, model_dir=None if model_dir is None else str(model_dir),
        cache_config=args.cache_config(), scheduler_config=scheduler,
        parallel_config=args.parallel_config(), device=device_type,
        dtype=_DTYPE_NAMES[resolve_dtype(args.dtype, torch.device(device_type))],
        load_format=args.load_format, attention_backend=backend, kernel_impl=args.kernel_impl,
        enforce_eager=args.enforce_eager, seed=args.seed, tokenizer_dir=tokenizer_dir,
        cuda_graph_sizes=_check_graph_sizes(args.cuda_graph_sizes),
        mixed_cuda_graph_max_tokens=_check_mixed_max_tokens(args.mixed_cuda_graph_max_tokens))
    logger.debug("engine config: %s on %s (%s), backend %s, max_model_len %d, %d seqs x %d tokens",
                model_dir or "dummy weights", device_type, config.dtype, backend,
                scheduler.max_model_len, scheduler.max_num_seqs, scheduler.max_num_batched_tokens)
    return config


def _device_memory_gib(device: str) -> float:
    """Total memory of the engine's GPU in GiB (0 on the CPU): larger GPUs get more sequences."""
    if torch.device(device).type != "cuda":
        return 0.0
    return torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30


def _check_graph_sizes(sizes: list[int] | None) -> list[int] | None:
    if sizes is None:
        return None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"cuda_graph_sizes must be batch sizes >= 1, got {sizes}")
    return sorted(set(sizes))


def _check_mixed_max_tokens(tokens: int) -> int:
    if tokens < 0:
        raise ValueError(f"mixed_cuda_graph_max_tokens must be >= 0 (0: off), got {tokens}")
    return tokens


def encode_config(config: EngineConfig) -> bytes:
    return msgspec.msgpack.encode(config)


def decode_config(data: bytes) -> EngineConfig:
    return msgspec.msgpack.decode(data, type=EngineConfig)
