"""``y = x @ W.T`` for a few rows (decode batches of 1-16 tokens) as a Triton kernel.

At batch 1-16 a linear layer is a weight-streaming problem: every byte of ``W`` is read once
and the arithmetic is negligible. cuBLAS picks a tile for the output width, and for some shapes
(Llama-8B's o_proj, 4096 x 4096) that leaves half the SMs idle: 64 tiles on 132 SMs read at
~55% of the copy bandwidth (profiled on the H100, docs/benchmarks.md). This kernel gives each
program ``BLOCK_N`` output columns of every row and walks the whole ``K`` dimension, so the
grid is ``N / BLOCK_N`` programs (256 for o_proj at 16) each streaming contiguous rows of ``W``,
with no split-K partials to reduce. Which is faster, it or cuBLAS, depends on the shape: the
layer chooses by measuring both (``layers/gpu_linear.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .triton_ops import _interpreting, tl, triton, why_unavailable

logger = logging.getLogger(__name__)

MAX_ROWS = 16  # tl.dot's smallest tile: rows are padded to 16 (masked loads, no copy)


@dataclass(frozen=True)
class SkinnyConfig:
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 4


CONFIGS = (SkinnyConfig(16, 256), SkinnyConfig(32, 128), SkinnyConfig(64, 64, num_stages=3))
INTERPRETER_CONFIG = SkinnyConfig(16, 32, num_warps=1, num_stages=1)

if triton is not None:

    @triton.jit
    def _skinny_kernel(x_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       EVEN_K: tl.constexpr, IEEE: tl.constexpr):
        """``BLOCK_N`` output columns of all (<= BLOCK_M) rows over the whole of K."""
        pid = tl.program_id(0)
        rm = tl.arange(0, BLOCK_M)
        rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        x_ptrs = x_ptr + rm[:, None] * stride_xm + rk[None, :]
        w_ptrs = w_ptr + rn[:, None].to(tl.int64) * stride_wn + rk[None, :]
        m_mask = rm[:, None] < M
        n_mask = rn[:, None] < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K:
                x = tl.load(x_ptrs, mask=m_mask, other=0.0)
                w = tl.load(w_ptrs, mask=n_mask, other=0.0)
            else:
                k_mask = (k0 + rk)[None, :] < K
                x = tl.load(x_ptrs, mask=m_mask & k_mask, other=0.0)
                w = tl.load(w_ptrs, mask=n_mask & k_mask, other=0.0)
            if IEEE:
                acc += tl.dot(x, tl.trans(w), input_precision="ieee")
            else:
                acc += tl.dot(x, tl.trans(w))
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        y_ptrs = y_ptr + rm[:, None] * stride_ym + rn[None, :]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_mask & (rn[None, :] < N))


def skinny_linear(x: torch.Tensor, weight: torch.Tensor,
                  config: SkinnyConfig | None = None) -> torch.Tensor:
    """``x`` [M <= 16, K] @ ``weight`` [N, K].T -> [M, N] in ``x``'s dtype (fp32 accumulate)."""
    reason = why_unavailable(x.device)
    if reason:
        raise RuntimeError(f"skinny_linear: {reason}")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x must be [M, K] and weight [N, K], got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    rows, k = x.shape
    n = weight.shape[0]
    if rows > MAX_ROWS:
        raise ValueError(f"skinny_linear takes at most {MAX_ROWS} rows, got {rows}")
    if x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("x and weight need a contiguous last dimension")
    if config is None:
        config = INTERPRETER_CONFIG if _interpreting() else CONFIGS[0]
    out = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    if rows == 0:
        return out
    grid = (triton.cdiv(n, config.block_n),)
    _skinny_kernel[grid](
        x, weight, out, rows, n, k, x.stride(0), weight.stride(0), out.stride(0),
        BLOCK_M=MAX_ROWS, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        EVEN_K=k % config.block_k == 0, IEEE=x.dtype == torch.float32,
        num_warps=config.num_warps, num_stages=config.num_stages)
    return out
