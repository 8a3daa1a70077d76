"""The phase-1 ops as Triton kernels (same calling convention as ``native``).

Runs on CUDA tensors, and on CPU tensors only through Triton's interpreter (env
``TRITON_INTERPRET=1`` set before triton is imported: correct but slow, for tests on small
shapes). A Triton program works on whole blocks of elements; the compiler picks vector widths,
so the kernels only have to keep each program's accesses contiguous:

* norms: one program per row; the row is held in registers between the sum of squares and the
  scaling when it fits (``SINGLE``), else read twice in chunks;
* rotary: one program per token, all heads of q then k in [heads, pairs] tiles, the token's cos
  and sin loaded once;
* silu_and_mul: a 2-D grid of (row, column block).
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl

    _IMPORT_ERROR: str | None = None
except Exception as exc:  # noqa: BLE001 - no triton (or a broken one): the op is unavailable
    triton = None
    tl = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

MAX_SINGLE_BLOCK = 8192  # widest row (padded to a power of two) kept whole in registers


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def is_available(device: torch.device | str = "cuda") -> bool:
    """True on CUDA when triton imports; on CPU only under ``TRITON_INTERPRET=1``."""
    return why_unavailable(device) == ""


def why_unavailable(device: torch.device | str = "cuda") -> str:
    device = torch.device(device)
    if _IMPORT_ERROR is not None:
        return f"triton does not import ({_IMPORT_ERROR})"
    if device.type == "cuda":
        return "" if torch.cuda.is_available() else "CUDA is not available"
    if device.type == "cpu":
        return "" if _interpreting() else "Triton runs on CPU tensors only with TRITON_INTERPRET=1"
    return f"no Triton kernels for device type {device.type!r}"


def _num_warps(block: int) -> int:
    return 4 if block <= 1024 else 8 if block <= 4096 else 16


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(out_ptr, x_ptr, w_ptr, x_row_stride, H, eps,
                         BLOCK: tl.constexpr, SINGLE: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * x_row_stride
        o_row = out_ptr + row * H
        if SINGLE:
            cols = tl.arange(0, BLOCK)
            mask = cols < H
            x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            inv_rms = tl.rsqrt(tl.sum(x * x, axis=0) / H + eps)
            w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(o_row + cols, (x * inv_rms * w).to(out_ptr.dtype.element_ty), mask=mask)
        else:
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(0, H, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                x = tl.load(x_row + cols, mask=cols < H, other=0.0).to(tl.float32)
                acc += x * x
            inv_rms = tl.rsqrt(tl.sum(acc, axis=0) / H + eps)
            for start in range(0, H, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                mask = cols < H
                x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
                w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
                tl.store(o_row + cols, (x * inv_rms * w).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _fused_add_rms_norm_kernel(x_ptr, r_ptr, w_ptr, x_row_stride, H, eps,
                                   BLOCK: tl.constexpr, SINGLE: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * x_row_stride
        r_row = r_ptr + row * H
        if SINGLE:
            cols = tl.arange(0, BLOCK)
            mask = cols < H
            s = (tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
                 + tl.load(r_row + cols, mask=mask, other=0.0).to(tl.float32))
            tl.store(r_row + cols, s.to(r_ptr.dtype.element_ty), mask=mask)
            inv_rms = tl.rsqrt(tl.sum(s * s, axis=0) / H + eps)
            w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(x_row + cols, (s * inv_rms * w).to(x_ptr.dtype.element_ty), mask=mask)
        else:
            # Pass 1 only reads, so pass 2 can recompute the fp32 sum from untouched inputs.
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(0, H, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                mask = cols < H
                s = (tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
                     + tl.load(r_row + cols, mask=mask, other=0.0).to(tl.float32))
                acc += s * s
            inv_rms = tl.rsqrt(tl.sum(acc, axis=0) / H + eps)
            for start in range(0, H, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                mask = cols < H
                s = (tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
                     + tl.load(r_row + cols, mask=mask, other=0.0).to(tl.float32))
                w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
                tl.store(r_row + cols, s.to(r_ptr.dtype.element_ty), mask=mask)
                tl.store(x_row + cols, (s * inv_rms * w).to(x_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_heads(base, num_heads, head_size, off1, off2, cos, sin, pmask,
                    BLOCK_H: tl.constexpr):
        """Rotate pairs (off1, off2) of every head at ``base`` (one token) in BLOCK_H-head tiles."""
        for h0 in range(0, num_heads, BLOCK_H):
            heads = h0 + tl.arange(0, BLOCK_H)
            mask = (heads < num_heads)[:, None] & pmask[None, :]
            ptr = base + heads[:, None] * head_size
            x1 = tl.load(ptr + off1[None, :], mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(ptr + off2[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(ptr + off1[None, :], (x1 * cos - x2 * sin).to(base.dtype.element_ty), mask=mask)
            tl.store(ptr + off2[None, :], (x2 * cos + x1 * sin).to(base.dtype.element_ty), mask=mask)

    @triton.jit
    def _rotary_kernel(pos_ptr, q_ptr, k_ptr, cache_ptr, q_stride, k_stride, q_heads, k_heads,
                       head_size, rot_dim, IS_NEOX: tl.constexpr, BLOCK_P: tl.constexpr,
                       BLOCK_H: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)
        pos = tl.load(pos_ptr + t).to(tl.int64)
        half = rot_dim // 2
        p = tl.arange(0, BLOCK_P)
        pmask = p < half
        row = cache_ptr + pos * rot_dim
        cos = tl.load(row + p, mask=pmask, other=0.0).to(tl.float32)[None, :]
        sin = tl.load(row + half + p, mask=pmask, other=0.0).to(tl.float32)[None, :]
        if IS_NEOX:  # pair i with i + half
            off1 = p
            off2 = p + half
        else:  # GPT-J: pair 2i with 2i + 1
            off1 = 2 * p
            off2 = 2 * p + 1
        _rope_heads(q_ptr + t * q_stride, q_heads, head_size, off1, off2, cos, sin, pmask, BLOCK_H)
        _rope_heads(k_ptr + t * k_stride, k_heads, head_size, off1, off2, cos, sin, pmask, BLOCK_H)

    @triton.jit
    def _silu_and_mul_kernel(out_ptr, x_ptr, d, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < d
        gate = tl.load(x_ptr + row * 2 * d + cols, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + row * 2 * d + d + cols, mask=mask, other=0.0).to(tl.float32)
        out = gate * tl.sigmoid(gate) * up
        tl.store(out_ptr + row * d + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
    """``x`` as [rows, H]: a view when its rows are evenly strided (e.g. ``x[:, :H]``), else a
    contiguous copy. Returns (x2d, row stride, copied)."""
    H = x.shape[-1]
    x2 = None
    if x.dim() > 0 and (x.stride(-1) == 1 or H == 1):
        try:
            x2 = x.view(-1, H)
        except RuntimeError:
            x2 = None
    copied = x2 is None
    if x2 is None:
        x2 = x.contiguous().view(-1, H)
    return x2, (x2.stride(0) if x2.shape[0] > 1 else H), copied


def _norm_block(H: int) -> tuple[int, bool]:
    block = triton.next_power_of_2(max(H, 1))
    return (block, True) if block <= MAX_SINGLE_BLOCK else (4096, False)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x2, stride, _ = _rows(x)
    H = x2.shape[-1]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x2.numel():
        block, single = _norm_block(H)
        _rms_norm_kernel[(x2.shape[0],)](out, x2, weight.contiguous(), stride, H, float(eps),
                                         BLOCK=block, SINGLE=single, num_warps=_num_warps(block))
    return out


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    x2, stride, x_copied = _rows(x)
    r2 = residual.contiguous().view(-1, residual.shape[-1])
    H = x2.shape[-1]
    if x2.numel():
        block, single = _norm_block(H)
        _fused_add_rms_norm_kernel[(x2.shape[0],)](x2, r2, weight.contiguous(), stride, H, float(eps),
                                                   BLOCK=block, SINGLE=single,
                                                   num_warps=_num_warps(block))
    if x_copied:
        x.copy_(x2.view(x.shape))
    if not residual.is_contiguous():
        residual.copy_(r2.view(residual.shape))
    return x, residual


def _token_layout(t: torch.Tensor, head_size: int) -> tuple[torch.Tensor, int]:
    """``t`` with each token contiguous ([T, H*hs] or [T, H, hs]) and its token stride."""
    ok = (t.dim() == 2 and t.stride(1) == 1) or (
        t.dim() == 3 and t.stride(2) == 1 and (t.size(1) == 1 or t.stride(1) == head_size))
    tk = t if ok else t.contiguous()
    return tk, (tk.stride(0) if tk.shape[0] > 1 else tk[0].numel())


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    pos = positions.reshape(-1)
    T = pos.numel()
    if T == 0:
        return query, key
    qk, q_stride = _token_layout(query, head_size)
    kk, k_stride = _token_layout(key, head_size)
    q_heads = qk[0].numel() // head_size
    k_heads = kk[0].numel() // head_size
    cache = cos_sin_cache.contiguous()
    rot_dim = cache.shape[-1]
    block_p = triton.next_power_of_2(max(rot_dim // 2, 1))
    block_h = max(1, min(triton.next_power_of_2(max(q_heads, k_heads)), 4096 // block_p))
    _rotary_kernel[(T,)](pos, qk, kk, cache, q_stride, k_stride, q_heads, k_heads, head_size,
                         rot_dim, IS_NEOX=bool(is_neox), BLOCK_P=block_p, BLOCK_H=block_h,
                         num_warps=4)
    if qk is not query:
        query.copy_(qk)
    if kk is not key:
        key.copy_(kk)
    return query, key


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    d = x.shape[-1] // 2
    out = torch.empty((*x.shape[:-1], d), dtype=x.dtype, device=x.device)
    rows = out.numel() // d if d else 0
    if rows:
        block = min(1024, triton.next_power_of_2(d))
        _silu_and_mul_kernel[(rows, triton.cdiv(d, block))](out, x, d, BLOCK=block,
                                                            num_warps=_num_warps(block))
    return out
