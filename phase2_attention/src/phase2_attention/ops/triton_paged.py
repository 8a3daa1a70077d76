"""Triton kernels for attention over a paged KV cache.

Cache layout (one tensor per layer): ``kv_cache[2, num_blocks, block_size, num_kv_heads,
head_size]``; ``kv_cache[0]`` holds keys, ``kv_cache[1]`` values. A token's *slot* is
``block_id * block_size + offset``; block 0 is the reserved null block that pads block tables.

Three entry points:

- :func:`store_kvcache` writes the new tokens' K/V at their slots (slot ``-1``: skip).
- :func:`paged_decode_attention`: one query token per sequence. One program serves all ``G``
  query heads of one KV head (GQA grouping: each K/V tile is read once per group and fed to a
  ``tl.dot`` with the ``G`` heads padded to 16 rows). The context is cut into ``num_splits``
  chunks processed in parallel (flash-decoding); a second small kernel merges the chunks'
  partial results through their log-sum-exp.
- :func:`paged_prefill_attention`: varlen causal attention, flash-attention-2 tiles of
  ``BLOCK_M`` queries x ``BLOCK_N`` keys, keys and values gathered through the block table.

Softmax runs online, in fp32 and in base 2 (``exp2``; the scale carries ``log2(e)``).
"""

from __future__ import annotations

import logging
import functools
import os

import torch

logger = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton is a Linux-only dependency
    HAS_TRITON = False

LOG2E = 1.4426950408889634
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def is_available(device: torch.device | str | None = None) -> bool:
    """True when these kernels can run on ``device``: CUDA with Triton importable, or the CPU
    under Triton's interpreter (``TRITON_INTERPRET=1``, slow; tests only)."""
    if not HAS_TRITON:
        return False
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "cpu":
        return os.environ.get("TRITON_INTERPRET") == "1"
    return False


def _interpreting(device: torch.device) -> bool:
    return device.type == "cpu"


PDL_ENV_VAR = "LIGHTVLLM_PDL"


@functools.lru_cache(maxsize=None)
def _pdl_on(index: int) -> bool:
    """sm90+ and a Triton that has grid dependency control (``launch_pdl``, 3.3 and later)."""
    try:
        from triton.language.extra.cuda import gdc_wait  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_launch(device: torch.device) -> dict:
    """Programmatic dependent launch (Hopper): the decode path's kernels are launched so that
    each may start while the kernel before it drains; they wait (``gdc_wait``) before reading
    anything it wrote. On by default on sm90+ (B2 on an H100: 167.6 vs 165.4 tok/s, three runs
    each, docs/benchmarks.md); env ``LIGHTVLLM_PDL=0`` turns it off; never on the interpreter.
    Returns the launch keywords (``USE_PDL`` and, when on, ``launch_pdl``)."""
    on = (os.environ.get(PDL_ENV_VAR, "1") != "0" and device.type == "cuda"
          and _pdl_on(device.index if device.index is not None else torch.cuda.current_device()))
    return {"USE_PDL": True, "launch_pdl": True} if on else {"USE_PDL": False}


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _pdl_enter(USE_PDL: tl.constexpr):
        """Under programmatic dependent launch: wait until the kernel before has finished and
        its writes are visible, then let the next kernel be scheduled early (it waits too)."""
        if USE_PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def _load_rows(ptrs, row_mask, d_mask, PAD_D: tl.constexpr):
        """A [rows, D_PAD] tile, rows masked; the head dim masked only when it is padded (a mask
        along the contiguous dim can cost the 16-byte vector loads)."""
        if PAD_D:
            x = tl.load(ptrs, mask=row_mask[:, None] & d_mask[None, :], other=0.0)
        else:
            x = tl.load(ptrs, mask=row_mask[:, None], other=0.0)
        return x

    @triton.jit
    def _load_full(ptrs, d_mask, PAD_D: tl.constexpr):
        if PAD_D:
            x = tl.load(ptrs, mask=d_mask[None, :], other=0.0)
        else:
            x = tl.load(ptrs)
        return x

    @triton.jit
    def _store_kvcache_kernel(
        key_ptr, value_ptr, cache_ptr, slot_ptr,
        k_stride_t, k_stride_h, v_stride_t, v_stride_h,
        c_stride_kv, c_stride_block, c_stride_off, c_stride_h,
        NUM_HEADS: tl.constexpr, HEAD_SIZE: tl.constexpr,
        H_PAD: tl.constexpr, D_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    ):
        t = tl.program_id(0).to(tl.int64)
        slot = tl.load(slot_ptr + t).to(tl.int64)
        if slot < 0:
            return
        h = tl.arange(0, H_PAD)
        d = tl.arange(0, D_PAD)
        mask = (h[:, None] < NUM_HEADS) & (d[None, :] < HEAD_SIZE)
        k = tl.load(key_ptr + t * k_stride_t + h[:, None] * k_stride_h + d[None, :], mask=mask)
        v = tl.load(value_ptr + t * v_stride_t + h[:, None] * v_stride_h + d[None, :], mask=mask)
        dst = (cache_ptr + (slot // BLOCK_SIZE) * c_stride_block
               + (slot % BLOCK_SIZE) * c_stride_off + h[:, None] * c_stride_h + d[None, :])
        tl.store(dst, k.to(cache_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + c_stride_kv, v.to(cache_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _decode_split_kernel(
        q_ptr, cache_ptr, bt_ptr, seq_lens_ptr, out_ptr, part_o_ptr, part_lse_ptr,
        scale_log2,
        q_stride_b, q_stride_h,
        c_stride_kv, c_stride_block, c_stride_off, c_stride_h,
        bt_stride_b, o_stride_b, o_stride_h,
        num_splits,
        G: tl.constexpr, G_PAD: tl.constexpr, HEAD_SIZE: tl.constexpr, D_PAD: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
        SINGLE: tl.constexpr, IEEE: tl.constexpr, USE_PDL: tl.constexpr,
    ):
        """One (kv head, sequence, split): the G query heads of the group against the split's
        slice of the context. SINGLE: the split is the whole context, write the final output."""
        _pdl_enter(USE_PDL)
        kvh = tl.program_id(0)
        b = tl.program_id(1)
        split = tl.program_id(2)
        seq_len = tl.load(seq_lens_ptr + b)
        split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
        start = split * split_len
        end = tl.minimum(start + split_len, seq_len)

        g = tl.arange(0, G_PAD)
        d = tl.arange(0, D_PAD)
        g_mask = g < G
        d_mask = d < HEAD_SIZE
        heads = kvh * G + g
        q = tl.load(q_ptr + b.to(tl.int64) * q_stride_b + heads[:, None] * q_stride_h + d[None, :],
                    mask=g_mask[:, None] & d_mask[None, :], other=0.0)
        q = q.to(cache_ptr.dtype.element_ty)

        m_i = tl.full([G_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, D_PAD], tl.float32)
        k_base = cache_ptr + kvh * c_stride_h
        bt_row = bt_ptr + b.to(tl.int64) * bt_stride_b
        for n0 in range(start, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            n_mask = n < end
            phys = tl.load(bt_row + n // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
            off = phys * c_stride_block + (n % BLOCK_SIZE) * c_stride_off
            k = _load_rows(k_base + off[:, None] + d[None, :], n_mask, d_mask, HEAD_SIZE != D_PAD)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            s = tl.where(n_mask[None, :], s * scale_log2, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = _load_rows(k_base + c_stride_kv + off[:, None] + d[None, :], n_mask, d_mask,
                           HEAD_SIZE != D_PAD)
            if IEEE:
                pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new

        if SINGLE:
            o = acc / l_i[:, None]
            dst = out_ptr + b.to(tl.int64) * o_stride_b + heads[:, None] * o_stride_h + d[None, :]
            tl.store(dst, o.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])
        else:
            # An empty split (short sequence) has l = 0: weight 0 in the merge, never NaN.
            has = l_i > 0
            o = acc / tl.where(has, l_i, 1.0)[:, None]
            lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
            row = (b * (G * tl.num_programs(0)) + heads).to(tl.int64) * num_splits + split
            tl.store(part_lse_ptr + row, lse, mask=g_mask)
            tl.store(part_o_ptr + row[:, None] * D_PAD + d[None, :], o, mask=g_mask[:, None])

    @triton.jit
    def _decode_reduce_kernel(
        part_o_ptr, part_lse_ptr, out_ptr,
        o_stride_b, o_stride_h, num_heads, num_splits,
        HEAD_SIZE: tl.constexpr, D_PAD: tl.constexpr, S_PAD: tl.constexpr,
        USE_PDL: tl.constexpr,
    ):
        """Merge the splits of one (sequence, head): out = sum_s w_s o_s / sum_s w_s with
        w_s = 2^(lse_s - max lse)."""
        _pdl_enter(USE_PDL)
        h = tl.program_id(0)
        b = tl.program_id(1)
        s = tl.arange(0, S_PAD)
        d = tl.arange(0, D_PAD)
        s_mask = s < num_splits
        row = (b * num_heads + h).to(tl.int64) * num_splits + s
        lse = tl.load(part_lse_ptr + row, mask=s_mask, other=float("-inf"))
        w = tl.exp2(lse - tl.max(lse, 0))
        o = tl.load(part_o_ptr + row[:, None] * D_PAD + d[None, :], mask=s_mask[:, None], other=0.0)
        res = tl.sum(w[:, None] * o, 0) / tl.sum(w, 0)
        tl.store(out_ptr + b.to(tl.int64) * o_stride_b + h * o_stride_h + d,
                 res.to(out_ptr.dtype.element_ty), mask=d < HEAD_SIZE)

    @triton.jit
    def _prefill_kernel(
        q_ptr, cache_ptr, bt_ptr, seq_lens_ptr, qsl_ptr, out_ptr,
        scale_log2,
        q_stride_t, q_stride_h,
        c_stride_kv, c_stride_block, c_stride_off, c_stride_h,
        bt_stride_b, o_stride_t, o_stride_h,
        G: tl.constexpr, HEAD_SIZE: tl.constexpr, D_PAD: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        """BLOCK_M queries of one (sequence, query head). Query i of a sequence sits at absolute
        position ctx + i and sees keys 0..ctx+i. Key tiles entirely below the tile's first
        query are processed without masks; the diagonal tiles with the causal mask; tiles
        entirely above the last query are never visited."""
        m_tile = tl.num_programs(0) - 1 - tl.program_id(0)  # heaviest tiles first
        h = tl.program_id(1)
        b = tl.program_id(2)
        q_start = tl.load(qsl_ptr + b)
        q_len = tl.load(qsl_ptr + b + 1) - q_start
        m_start = m_tile * BLOCK_M
        if m_start >= q_len:
            return
        seq_len = tl.load(seq_lens_ptr + b)
        ctx = seq_len - q_len
        rows = m_start + tl.arange(0, BLOCK_M)
        row_mask = rows < q_len
        d = tl.arange(0, D_PAD)
        d_mask = d < HEAD_SIZE
        q_rows = (q_start + rows).to(tl.int64)
        q = tl.load(q_ptr + q_rows[:, None] * q_stride_t + h * q_stride_h + d[None, :],
                    mask=row_mask[:, None] & d_mask[None, :], other=0.0)
        q = q.to(cache_ptr.dtype.element_ty)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
        k_base = cache_ptr + (h // G) * c_stride_h
        bt_row = bt_ptr + b.to(tl.int64) * bt_stride_b
        pos = ctx + rows  # absolute position of each query

        # 1) keys every query of the tile sees: no masks on keys.
        full_end = ((ctx + m_start) // BLOCK_N) * BLOCK_N
        for n0 in range(0, full_end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            phys = tl.load(bt_row + n // BLOCK_SIZE).to(tl.int64)
            off = phys * c_stride_block + (n % BLOCK_SIZE) * c_stride_off
            k = _load_full(k_base + off[:, None] + d[None, :], d_mask, HEAD_SIZE != D_PAD)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            s = s * scale_log2
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = _load_full(k_base + c_stride_kv + off[:, None] + d[None, :], d_mask,
                           HEAD_SIZE != D_PAD)
            if IEEE:
                pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new

        # 2) the diagonal: causal mask, and the end of the sequence.
        diag_end = tl.minimum(seq_len, ctx + m_start + BLOCK_M)
        for n0 in range(full_end, diag_end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            n_mask = n < seq_len
            phys = tl.load(bt_row + n // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
            off = phys * c_stride_block + (n % BLOCK_SIZE) * c_stride_off
            k = _load_rows(k_base + off[:, None] + d[None, :], n_mask, d_mask, HEAD_SIZE != D_PAD)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            visible = (n[None, :] <= pos[:, None]) & n_mask[None, :]
            s = tl.where(visible, s * scale_log2, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = _load_rows(k_base + c_stride_kv + off[:, None] + d[None, :], n_mask, d_mask,
                           HEAD_SIZE != D_PAD)
            if IEEE:
                pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new

        o = acc / l_i[:, None]
        tl.store(out_ptr + q_rows[:, None] * o_stride_t + h * o_stride_h + d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & d_mask[None, :])


# --------------------------------------------------------------------------------------------
# Checks shared by the wrappers
# --------------------------------------------------------------------------------------------
def _check_cache(kv_cache: torch.Tensor) -> tuple[int, int, int, int]:
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2:
        raise ValueError(f"kv_cache must be [2, num_blocks, block_size, num_kv_heads, head_size], "
                         f"got shape {tuple(kv_cache.shape)}")
    if kv_cache.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"kv_cache dtype {kv_cache.dtype} not in {SUPPORTED_DTYPES}")
    if kv_cache.stride(-1) != 1:
        raise ValueError(f"kv_cache's last dim must be contiguous, stride is {kv_cache.stride(-1)}")
    _, num_blocks, block_size, num_kv_heads, head_size = kv_cache.shape
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of 2 >= 16, got {block_size}")
    if head_size < 16:
        raise ValueError(f"head_size must be >= 16, got {head_size}")
    return num_blocks, block_size, num_kv_heads, head_size


def _cache_strides(kv_cache: torch.Tensor) -> tuple[int, int, int, int]:
    return kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3)


def _check_new_kv(key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor,
                  num_kv_heads: int, head_size: int) -> int:
    """The step's new ``key``/``value`` [T, Hk, D] and their slots [T]; returns T."""
    if key.shape != value.shape or key.dim() != 3 or key.shape[1:] != (num_kv_heads, head_size):
        raise ValueError(f"key/value must be [T, {num_kv_heads}, {head_size}], got "
                         f"{tuple(key.shape)} and {tuple(value.shape)}")
    num_tokens = key.shape[0]
    if slot_mapping.shape != (num_tokens,):
        raise ValueError(f"slot_mapping must be [{num_tokens}], got {tuple(slot_mapping.shape)}")
    return num_tokens


def _rowmajor_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


# --------------------------------------------------------------------------------------------
# store_kvcache
# --------------------------------------------------------------------------------------------
def store_kvcache(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                  slot_mapping: torch.Tensor) -> None:
    """Write ``key``/``value`` ``[T, Hk, D]`` (row-strided views allowed) into ``kv_cache`` at
    ``slot_mapping[t]``; a slot of ``-1`` leaves the cache untouched for that token."""
    _, block_size, num_kv_heads, head_size = _check_cache(kv_cache)
    num_tokens = _check_new_kv(key, value, slot_mapping, num_kv_heads, head_size)
    if num_tokens == 0:
        return
    key, value = _rowmajor_last(key), _rowmajor_last(value)
    _store_kvcache_kernel[(num_tokens,)](
        key, value, kv_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        *_cache_strides(kv_cache),
        NUM_HEADS=num_kv_heads, HEAD_SIZE=head_size,
        H_PAD=_next_pow2(num_kv_heads), D_PAD=_next_pow2(head_size), BLOCK_SIZE=block_size,
        num_warps=4 if num_kv_heads * head_size >= 1024 else 1,
    )


# --------------------------------------------------------------------------------------------
# Decode
# --------------------------------------------------------------------------------------------
MAX_SPLITS = 32
MIN_TOKENS_PER_SPLIT = 256


def choose_num_splits(batch: int, num_kv_heads: int, max_context: int, num_sms: int) -> int:
    """Split the context until the grid holds about four programs per SM, keeping at least
    ``MIN_TOKENS_PER_SPLIT`` tokens per split (a split's fixed cost is loading Q and writing
    a D-wide fp32 partial)."""
    programs = batch * num_kv_heads
    want = triton.cdiv(4 * num_sms, programs) if HAS_TRITON else 1
    cap = max(1, max_context // MIN_TOKENS_PER_SPLIT)
    return max(1, min(want, cap, MAX_SPLITS))


SMALL_BATCH_DECODE = (4, 32)  # batches that take the narrower tile (measured at 4 and 16)


def _decode_config(head_size: int, block_size: int, dtype: torch.dtype, device: torch.device,
                   batch: int = 1):
    if _interpreting(device):
        return dict(BLOCK_N=32, num_warps=1, num_stages=1)
    if SMALL_BATCH_DECODE[0] <= batch <= SMALL_BATCH_DECODE[1] and head_size <= 128:
        # H100, Llama-8B shape, 512-token contexts, at the split count chosen below, in CUDA
        # graphs (bench_attention.py --tune-small): 16 sequences 26.1 us against 28.9 us for the
        # 64-wide tile of 4 warps, 4 sequences 13.3 against 13.6; batch 1 is faster with it
        return dict(BLOCK_N=32, num_warps=2, num_stages=3)
    # H100, batch 64 x 4k, Llama-8B shape: 95% of 3.01 TB/s; BLOCK_N 32..128, 4 or 8 warps and
    # 2..4 stages all landed within 4% of it.
    block_n = 64 if head_size <= 128 else 32
    return dict(BLOCK_N=block_n, num_warps=4, num_stages=3)


def paged_decode_attention(query: torch.Tensor, kv_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                           out: torch.Tensor | None = None, num_splits: int | None = None,
                           config: dict | None = None) -> torch.Tensor:
    """Attention of one new query token per sequence over its ``seq_lens[b]`` cached tokens.

    ``query`` [B, Hq, D]; returns ``out`` [B, Hq, D] in the query's dtype. ``num_splits``
    None picks the split count from the batch, the KV heads, the SM count and the longest
    possible context (the block table's width, so no host sync). ``config`` overrides the
    tile settings (``BLOCK_N``, ``num_warps``, ``num_stages``): a tuning knob.
    """
    _, block_size, num_kv_heads, head_size = _check_cache(kv_cache)
    if query.dim() != 3 or query.shape[2] != head_size or query.shape[1] % num_kv_heads:
        raise ValueError(f"query must be [B, G*{num_kv_heads}, {head_size}], got {tuple(query.shape)}")
    batch, num_heads, _ = query.shape
    if block_tables.dim() != 2 or block_tables.shape[0] != batch or seq_lens.shape != (batch,):
        raise ValueError(f"block_tables must be [{batch}, max_blocks] and seq_lens [{batch}], got "
                         f"{tuple(block_tables.shape)} and {tuple(seq_lens.shape)}")
    query = _rowmajor_last(query)
    if out is None:
        out = torch.empty(batch, num_heads, head_size, dtype=query.dtype, device=query.device)
    elif out.shape != query.shape or out.stride(-1) != 1:
        raise ValueError(f"out must be {tuple(query.shape)} with a contiguous last dim")
    if batch == 0:
        return out
    block_tables = block_tables if block_tables.stride(-1) == 1 else block_tables.contiguous()

    cfg = _decode_config(head_size, block_size, kv_cache.dtype, query.device, batch)
    cfg.update(config or {})
    if num_splits is None:
        sms = 132 if _interpreting(query.device) else _num_sms(query.device.index or 0)
        num_splits = choose_num_splits(batch, num_kv_heads, block_tables.shape[1] * block_size, sms)
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    group = num_heads // num_kv_heads
    d_pad = _next_pow2(head_size)
    single = num_splits == 1
    pdl = pdl_launch(query.device)
    if single:
        part_o = part_lse = out  # unused
    else:
        part_o = torch.empty(batch, num_heads, num_splits, d_pad, dtype=torch.float32,
                             device=query.device)
        part_lse = torch.empty(batch, num_heads, num_splits, dtype=torch.float32,
                               device=query.device)
    _decode_split_kernel[(num_kv_heads, batch, num_splits)](
        query, kv_cache, block_tables, seq_lens, out, part_o, part_lse,
        scale * LOG2E,
        query.stride(0), query.stride(1),
        *_cache_strides(kv_cache),
        block_tables.stride(0), out.stride(0), out.stride(1),
        num_splits,
        G=group, G_PAD=max(16, _next_pow2(group)), HEAD_SIZE=head_size, D_PAD=d_pad,
        BLOCK_SIZE=block_size, BLOCK_N=cfg["BLOCK_N"], SINGLE=single,
        IEEE=kv_cache.dtype == torch.float32,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl,
    )
    if not single:
        _decode_reduce_kernel[(num_heads, batch)](
            part_o, part_lse, out, out.stride(0), out.stride(1), num_heads, num_splits,
            HEAD_SIZE=head_size, D_PAD=d_pad, S_PAD=max(2, _next_pow2(num_splits)),
            num_warps=1 if _interpreting(query.device) else 4, **pdl,
        )
    return out


# --------------------------------------------------------------------------------------------
# Prefill
# --------------------------------------------------------------------------------------------
def _prefill_config(head_size: int, dtype: torch.dtype, device: torch.device):
    if _interpreting(device):
        return dict(BLOCK_M=16, BLOCK_N=32, num_warps=1, num_stages=1)
    if head_size <= 64:
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)
    if head_size <= 128:  # H100, Llama-8B shape at 4k: 313 TFLOP/s (BLOCK_N=64: 291)
        return dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3)
    return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)


def paged_prefill_attention(query: torch.Tensor, kv_cache: torch.Tensor,
                            block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                            seq_lens: torch.Tensor, max_query_len: int, scale: float,
                            out: torch.Tensor | None = None,
                            config: dict | None = None) -> torch.Tensor:
    """Causal varlen attention: sequence b's queries ``query[qsl[b]:qsl[b+1]]`` are its last
    ``q_len`` positions; keys and values (context and new tokens alike) come from the paged
    cache. ``query`` [T, Hq, D]; returns ``out`` [T, Hq, D] in the query's dtype."""
    _, block_size, num_kv_heads, head_size = _check_cache(kv_cache)
    if query.dim() != 3 or query.shape[2] != head_size or query.shape[1] % num_kv_heads:
        raise ValueError(f"query must be [T, G*{num_kv_heads}, {head_size}], got {tuple(query.shape)}")
    num_tokens, num_heads, _ = query.shape
    batch = seq_lens.shape[0]
    if query_start_loc.shape != (batch + 1,) or block_tables.dim() != 2 \
            or block_tables.shape[0] != batch:
        raise ValueError(f"query_start_loc must be [{batch + 1}] and block_tables [{batch}, n], got "
                         f"{tuple(query_start_loc.shape)} and {tuple(block_tables.shape)}")
    query = _rowmajor_last(query)
    if out is None:
        out = torch.empty(num_tokens, num_heads, head_size, dtype=query.dtype, device=query.device)
    elif out.shape != query.shape or out.stride(-1) != 1:
        raise ValueError(f"out must be {tuple(query.shape)} with a contiguous last dim")
    if num_tokens == 0 or batch == 0 or max_query_len <= 0:
        return out
    block_tables = block_tables if block_tables.stride(-1) == 1 else block_tables.contiguous()
    cfg = _prefill_config(head_size, kv_cache.dtype, query.device)
    cfg.update(config or {})
    grid = (triton.cdiv(max_query_len, cfg["BLOCK_M"]), num_heads, batch)
    _prefill_kernel[grid](
        query, kv_cache, block_tables, seq_lens, query_start_loc, out,
        scale * LOG2E,
        query.stride(0), query.stride(1),
        *_cache_strides(kv_cache),
        block_tables.stride(0), out.stride(0), out.stride(1),
        G=num_heads // num_kv_heads, HEAD_SIZE=head_size, D_PAD=_next_pow2(head_size),
        BLOCK_SIZE=block_size, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        IEEE=kv_cache.dtype == torch.float32,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out


__all__ = ["is_available", "store_kvcache", "paged_decode_attention", "paged_prefill_attention",
           "choose_num_splits"]
