"""LightvLLM's public API, re-exported from the phase packages (names follow vLLM)."""

from phase1_kernels import LightvLLM, LlamaForCausalLM, ModelConfig
from phase2_attention import CacheConfig, KVCacheManager, PagedAttentionMetadata
from phase3_scheduling import (
    LLM,
    AsyncLLMEngine,
    CompletionOutput,
    EngineArgs,
    LLMEngine,
    RequestOutput,
    SamplingParams,
)

__all__ = [
    "LightvLLM", "LlamaForCausalLM", "ModelConfig", "CacheConfig", "KVCacheManager",
    "PagedAttentionMetadata", "LLM", "AsyncLLMEngine", "CompletionOutput", "EngineArgs",
    "LLMEngine", "RequestOutput", "SamplingParams",
]
