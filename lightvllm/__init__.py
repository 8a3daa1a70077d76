"""LightvLLM's public API, re-exported from the phase packages (names follow vLLM).

The names load on first use (PEP 562): ``lightvllm serve`` (``lightvllm.cli``) starts the engine
process before anything imports torch, so its imports overlap the server's."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_SOURCES = {
    "phase1_kernels": ("LightvLLM", "LlamaForCausalLM", "ModelConfig"),
    "phase2_attention": ("CacheConfig", "KVCacheManager", "PagedAttentionMetadata"),
    "phase3_scheduling": ("LLM", "AsyncLLMEngine", "CompletionOutput", "EngineArgs", "LLMEngine",
                          "RequestOutput", "SamplingParams"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = [
    "LightvLLM", "LlamaForCausalLM", "ModelConfig", "CacheConfig", "KVCacheManager",
    "PagedAttentionMetadata", "LLM", "AsyncLLMEngine", "CompletionOutput", "EngineArgs",
    "LLMEngine", "RequestOutput", "SamplingParams",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
