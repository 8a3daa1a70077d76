"""Phase 2's attention backends, registered by name in phase 1's backend registry so that
``LlamaForCausalLM(attn_backend="triton_paged")`` (or env ``LIGHTVLLM_ATTENTION_BACKEND``) picks
them without any change to the model."""

from __future__ import annotations

import torch

from phase1_kernels.layers.attention import register_backend

from .cpu_paged import CpuPagedBackend
from .flash_attn import (FlashAttnBackend, FlashAttnUnavailable, FlashAttnUnsupported,
                         flash_attn_available, flash_attn_unavailable_reason, flash_attn_version)
from .sdpa import SdpaBackend
from .torch_paged import TorchPagedBackend
from .triton_paged import TritonPagedBackend

PAGED_BACKENDS = ("torch_paged", "triton_paged", "flash_attn", "sdpa", "cpu_paged")

register_backend("torch_paged", TorchPagedBackend)
register_backend("sdpa", SdpaBackend)
register_backend("flash_attn", FlashAttnBackend)
register_backend("triton_paged", TritonPagedBackend)
register_backend("cpu_paged", CpuPagedBackend)


def best_paged_backend(device: torch.device | str, block_size: int = 16) -> str:
    """flash-attn 2 where installed and its block size fits, else our Triton kernels on GPU;
    on CPU our C++ paged kernel where the extension builds, else PyTorch's SDPA over the paged
    cache. FlashAttention 4 is taken only when asked for by name: it compiles each kernel
    variant at its first call, and docs/benchmarks.md has where it beats the Triton kernels."""
    if torch.device(device).type == "cuda":
        if flash_attn_available() and flash_attn_version() == 2 and block_size % 256 == 0:
            return "flash_attn"
        return "triton_paged"
    from ..ops import cpu_paged

    return "cpu_paged" if cpu_paged.is_available() else "sdpa"


__all__ = ["CpuPagedBackend", "FlashAttnBackend", "FlashAttnUnavailable", "FlashAttnUnsupported",
           "SdpaBackend", "TorchPagedBackend", "TritonPagedBackend", "PAGED_BACKENDS",
           "best_paged_backend", "flash_attn_available", "flash_attn_unavailable_reason",
           "flash_attn_version"]
