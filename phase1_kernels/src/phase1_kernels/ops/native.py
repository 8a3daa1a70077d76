"""Plain-PyTorch reference implementations of the phase-1 kernels.

These are the specification: every compiled (C++/CUDA) and Triton kernel is tested against them
(run in float64 by the tests), and they are the fallback when nothing faster is available.
All four functions follow the calling convention shared by every implementation (see
``phase1_kernels.ops``): they return their results; compiled kernels that work in place return
the very tensors they were given.
"""

from __future__ import annotations

import logging
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x**2) + eps) * weight`` over the last dim, accumulated in fp32 (or fp64)."""
    acc = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(acc)
    inv_rms = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (xf * inv_rms * weight.to(acc)).to(x.dtype)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual = x + residual; x = rms_norm(residual)``; returns ``(x, residual)``.

    The normalised output is computed from the fp32 sum, before it is rounded back to the
    residual's dtype, exactly like the fused kernels.
    """
    acc = torch.promote_types(x.dtype, torch.float32)
    summed = x.to(acc) + residual.to(acc)
    inv_rms = torch.rsqrt(summed.pow(2).mean(dim=-1, keepdim=True) + eps)
    out = (summed * inv_rms * weight.to(acc)).to(x.dtype)
    return out, summed.to(residual.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool) -> torch.Tensor:
    """Rotate the first ``2 * cos.shape[-1]`` channels of each head of ``x`` ([T, H, D])."""
    half = cos.shape[-1]
    rot, rest = x[..., : 2 * half], x[..., 2 * half :]
    if is_neox:
        x1, x2 = rot[..., :half], rot[..., half:]
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    return torch.cat((out, rest), dim=-1)


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply rotary position embedding to ``query`` and ``key``.

    ``positions``: [T] int; ``query``: [T, Hq * head_size] (or [T, Hq, head_size]); ``key`` likewise
    with its own head count; ``cos_sin_cache``: [max_position, rot_dim], cos in the first half of
    each row and sin in the second. Only the first ``rot_dim`` channels of each head rotate.
    ``is_neox`` selects the NeoX layout (rotate halves) over GPT-J's (rotate interleaved pairs).
    Returns new ``(query, key)`` with the input shapes and dtypes.
    """
    acc = torch.promote_types(query.dtype, torch.float32)
    cos_sin = cos_sin_cache.index_select(0, positions.reshape(-1).long()).to(acc)
    cos, sin = cos_sin.chunk(2, dim=-1)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    num_tokens = positions.numel()

    def apply(x: torch.Tensor) -> torch.Tensor:
        heads = x.reshape(num_tokens, -1, head_size).to(acc)
        return _rotate(heads, cos, sin, is_neox).to(x.dtype).reshape(x.shape)

    return apply(query), apply(key)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` for ``x`` of last dim ``2d`` (LLaMA's gated MLP)."""
    acc = torch.promote_types(x.dtype, torch.float32)
    d = x.shape[-1] // 2
    xf = x.to(acc)
    return (F.silu(xf[..., :d]) * xf[..., d:]).to(x.dtype)
