"""The phase-1 ops through our C++/CUDA extension (``torch.ops.lightvllm.*``).

Same calling convention as ``native``. The registered ops take out-parameters (vLLM style); these
wrappers allocate the outputs, and hand the kernels tensors whose rows they can address: a
row-strided input (``x[:, :H]`` of a wider tensor) goes through without a copy, anything else is
made contiguous first (and, for the in-place ops, copied back afterwards).
"""

from __future__ import annotations

import logging
import torch

from . import extension

logger = logging.getLogger(__name__)

_fakes_registered = False


def _ops():
    if not extension.load():
        raise RuntimeError(f"lightvllm extension unavailable: {extension.why_unavailable('cpu')}")
    return torch.ops.lightvllm


def register_fakes() -> None:
    """Shape-only implementations for FakeTensor / torch.compile / opcheck (once per process)."""
    global _fakes_registered
    if _fakes_registered:
        return
    _fakes_registered = True

    @torch.library.register_fake("lightvllm::rms_norm")
    def _rms_norm_fake(out, input, weight, epsilon):
        return None

    @torch.library.register_fake("lightvllm::fused_add_rms_norm")
    def _fused_add_rms_norm_fake(input, residual, weight, epsilon):
        return None

    @torch.library.register_fake("lightvllm::rotary_embedding")
    def _rotary_embedding_fake(positions, query, key, head_size, cos_sin_cache, is_neox):
        return None

    @torch.library.register_fake("lightvllm::silu_and_mul")
    def _silu_and_mul_fake(out, input):
        return None

    @torch.library.register_fake("lightvllm::paged_attention")
    def _paged_attention_fake(out, query, kv_cache, block_tables, seq_lens, query_start_loc, scale):
        return None

    @torch.library.register_fake("lightvllm::store_kv_cache")
    def _store_kv_cache_fake(key, value, kv_cache, slot_mapping):
        return None

    @torch.library.register_fake("lightvllm::pack_linear_weight")
    def _pack_linear_weight_fake(weight):
        return weight.new_empty((-(-weight.shape[0] // 16), weight.shape[1], 16))

    @torch.library.register_fake("lightvllm::packed_linear")
    def _packed_linear_fake(out, input, packed):
        return None

    @torch.library.register_fake("lightvllm::small_batch_linear")
    def _small_batch_linear_fake(out, input, weight, cols_per_warp):
        return None

    @torch.library.register_fake("lightvllm::small_batch_linear_silu")
    def _small_batch_linear_silu_fake(out, input, weight, cols_per_warp):
        return None

    @torch.library.register_fake("lightvllm::mma_linear")
    def _mma_linear_fake(out, input, weight, warps, tiles):
        return None

    @torch.library.register_fake("lightvllm::mma_linear_silu")
    def _mma_linear_silu_fake(out, input, weight, warps, tiles):
        return None

    @torch.library.register_fake("lightvllm::prefetch_l2")
    def _prefetch_l2_fake(tensor, max_bytes):
        return None

    @torch.library.register_fake("lightvllm::vector_add")
    def _vector_add_fake(a, b):
        return torch.empty_like(a, memory_format=torch.contiguous_format)


def _rows_addressable(x: torch.Tensor) -> bool:
    """True if ``x`` is rows of contiguous elements at a fixed stride (what the kernels take)."""
    if x.dim() == 0 or (x.stride(-1) != 1 and x.size(-1) != 1):
        return False
    for d in range(x.dim() - 2):
        if x.size(d) != 1 and x.stride(d) != x.stride(d + 1) * x.size(d + 1):
            return False
    return True


def _heads_addressable(t: torch.Tensor) -> bool:
    """True if each token of ``t`` ([T, H*hs] or [T, H, hs]) is contiguous (any token stride)."""
    if t.dim() == 2:
        return t.stride(1) == 1
    return t.dim() == 3 and t.stride(2) == 1 and (t.size(1) == 1 or t.stride(1) == t.size(2))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if not _rows_addressable(x):
        x = x.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _ops().rms_norm(out, x, weight.contiguous(), float(eps))
    return out


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    xk = x if _rows_addressable(x) else x.contiguous()
    rk = residual if residual.is_contiguous() else residual.contiguous()
    _ops().fused_add_rms_norm(xk, rk, weight.contiguous(), float(eps))
    if xk is not x:
        x.copy_(xk)
    if rk is not residual:
        residual.copy_(rk)
    return x, residual


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    qk = query if _heads_addressable(query) else query.contiguous()
    kk = key if _heads_addressable(key) else key.contiguous()
    cache = cos_sin_cache if cos_sin_cache.is_contiguous() else cos_sin_cache.contiguous()
    _ops().rotary_embedding(positions, qk, kk, int(head_size), cache, bool(is_neox))
    if qk is not query:
        query.copy_(qk)
    if kk is not key:
        key.copy_(kk)
    return query, key


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    d = x.shape[-1] // 2
    out = torch.empty((*x.shape[:-1], d), dtype=x.dtype, device=x.device)
    _ops().silu_and_mul(out, x)
    return out


def vector_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` through the roadmap's first kernel (CPU loop or CUDA grid-stride kernel)."""
    return _ops().vector_add(a, b)


def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, cols_per_warp: int = 2, *,
                       checked: bool = True) -> torch.Tensor:
    """``x`` [M <= 8, K] @ ``weight`` [N, K].T on CUDA by the weight-streaming kernel (fp16/bf16;
    K a multiple of 8, ``x`` rows contiguous and 16-byte aligned, ``weight`` contiguous).
    ``checked=False`` skips the Python checks for a caller that has just made them
    (``small_batch_linear_refusal``), e.g. the linear layers' per-call dispatch."""
    if checked:
        _check_small_batch_linear(x, weight, cols_per_warp)
    out = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype, device=x.device)
    _ops().small_batch_linear(out, x, weight, int(cols_per_warp))
    return out


def small_batch_linear_silu(x: torch.Tensor, weight: torch.Tensor, cols_per_warp: int = 4, *,
                            checked: bool = True) -> torch.Tensor:
    """``silu(x @ gate.T) * (x @ up.T)`` for ``weight`` = [gate; up] [2d, K] in one weight
    stream (the activation is the GEMV's epilogue): ``x`` [M <= 8, K] -> [M, d], bit for bit
    ``silu_and_mul(small_batch_linear(x, weight))``. ``cols_per_warp`` 4: two outputs per warp
    (gate and up rows of each); 1 or 2: one."""
    if checked:
        _check_small_batch_linear(x, weight, cols_per_warp)
        if weight.shape[0] % 2:
            raise ValueError(f"small_batch_linear_silu needs an even number of weight rows "
                             f"(gate then up), got {weight.shape[0]}")
    out = torch.empty(x.shape[0], weight.shape[0] // 2, dtype=x.dtype, device=x.device)
    _ops().small_batch_linear_silu(out, x, weight, int(cols_per_warp))
    return out


def mma_linear(x: torch.Tensor, weight: torch.Tensor, warps: int = 8, tiles: int = 1, *,
               checked: bool = True) -> torch.Tensor:
    """``x`` [M <= 16, K] @ ``weight`` [N, K].T on CUDA by the tensor-core weight stream
    (``csrc/cuda/mma_linear_kernel.cuh``; fp16/bf16, K a multiple of 32, ``x`` rows contiguous and
    16-byte aligned, ``weight`` contiguous). ``warps`` (4 or 8) split K inside each block of
    ``tiles`` (1 or 2) x 16 output columns. ``checked=False``: the caller has just asked
    ``mma_linear_refusal``."""
    if checked:
        _raise_if(mma_linear_refusal(x, weight, warps, tiles))
    out = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype, device=x.device)
    _ops().mma_linear(out, x, weight, int(warps), int(tiles))
    return out


def mma_linear_silu(x: torch.Tensor, weight: torch.Tensor, warps: int = 8, tiles: int = 1, *,
                    checked: bool = True) -> torch.Tensor:
    """``silu(x @ gate.T) * (x @ up.T)`` for ``weight`` = [gate; up] [2d, K] in one tensor-core
    weight stream: ``x`` [M <= 16, K] -> [M, d], bit for bit ``silu_and_mul(mma_linear(x, w))``."""
    if checked:
        if weight.dim() == 2 and weight.shape[0] % 2:
            raise ValueError(f"mma_linear_silu needs an even number of weight rows (gate then up), "
                             f"got {weight.shape[0]}")
        _raise_if(mma_linear_refusal(x, weight, warps, tiles))
    out = torch.empty(x.shape[0], weight.shape[0] // 2, dtype=x.dtype, device=x.device)
    _ops().mma_linear_silu(out, x, weight, int(warps), int(tiles))
    return out


def mma_linear_refusal(x: torch.Tensor, weight: torch.Tensor, warps: int = 8, tiles: int = 1) -> str:
    """Why ``mma_linear`` cannot take these inputs, or "" if it can."""
    if warps not in (4, 8):
        return f"mma_linear's warps must be 4 or 8, got {warps}"
    if tiles not in (1, 2):
        return f"mma_linear's tiles must be 1 or 2, got {tiles}"
    return _stream_refusal("mma_linear", x, weight, max_rows=16, k_multiple=32)


def _raise_if(reason: str) -> None:
    if reason:
        raise ValueError(reason)


def prefetch_l2(tensor: torch.Tensor, max_bytes: int) -> None:
    """Ask L2 for the first ``max_bytes`` of a contiguous CUDA ``tensor`` (a hint: nothing
    changes value). One small kernel that lets the next one start at once (Hopper PDL)."""
    _ops().prefetch_l2(tensor, int(max_bytes))


def _check_small_batch_linear(x: torch.Tensor, weight: torch.Tensor, cols_per_warp: int) -> None:
    """The kernel's own checks, as ValueErrors before the call (on the H100 a failed check
    inside this CUDA op crashed the process instead of raising: docs/phase1.md)."""
    reason = small_batch_linear_refusal(x, weight, cols_per_warp)
    if reason:
        raise ValueError(reason)


def small_batch_linear_refusal(x: torch.Tensor, weight: torch.Tensor,
                               cols_per_warp: int = 2) -> str:
    """Why ``small_batch_linear`` cannot take these inputs, or "" if it can."""
    if cols_per_warp not in (1, 2, 4):
        return f"cols_per_warp must be 1, 2 or 4, got {cols_per_warp}"
    return _stream_refusal("small_batch_linear", x, weight, max_rows=8, k_multiple=8)


def _stream_refusal(name: str, x: torch.Tensor, weight: torch.Tensor, max_rows: int,
                    k_multiple: int) -> str:
    """What the weight-streaming kernels share: fp16/bf16, ``x`` [M <= max_rows, K] with
    contiguous 16-byte aligned rows, a contiguous aligned ``weight`` [N, K], one CUDA device."""
    if x.dtype not in (torch.float16, torch.bfloat16) or weight.dtype != x.dtype:
        return (f"{name} takes float16 or bfloat16 x and weight of one dtype, "
                f"got {x.dtype} and {weight.dtype}")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        return f"x must be [M, K] and weight [N, K], got {tuple(x.shape)} and {tuple(weight.shape)}"
    if x.shape[0] > max_rows:
        return f"{name} takes at most {max_rows} rows, got {x.shape[0]}"
    if (x.shape[1] % k_multiple or x.stride(1) != 1 or x.stride(0) % 8 or not weight.is_contiguous()
            or x.data_ptr() % 16 or weight.data_ptr() % 16):
        return (f"{name} needs K to be a multiple of {k_multiple}, x's row stride in multiples of 8, "
                f"contiguous rows, a contiguous weight and 16-byte aligned x and weight")
    if x.device != weight.device or x.device.type != "cuda":
        return f"x and weight must be on one CUDA device, got {x.device} and {weight.device}"
    return ""
