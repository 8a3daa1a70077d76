"""FlashAttention's kernels over our paged KV cache.

FlashAttention 4 (PyPI ``flash-attn-4``: CuTe DSL kernels compiled at first call, sm80/sm90/
sm100) is used when ``flash_attn.cute`` imports; flash-attn 2's CUDA build when only that is
installed. Both read the cache in place: its ``[2, num_blocks, block_size, Hk, D]`` layout gives
``cache[0]``/``cache[1]`` of ``[num_blocks, block_size, Hk, D]``, FlashAttention's paged layout.

FA4 runs the whole flattened batch (decodes, prefills, chunks with context) in one varlen call:
``cu_seqlens_q`` = our ``query_start_loc``, ``seqused_k`` = ``seq_lens``, ``page_table`` = the
block tables; its causal mask is aligned to the end of each sequence, which is our "queries are
the last q of k positions". On Hopper a page of the kernel's key tile (128 tokens at head size
128) loads by TMA, any other block size through its cp.async gather path; sm90 has no split-KV.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch

from phase1_kernels.layers.attention import AttentionBackend

from .paged_common import check_paged

logger = logging.getLogger(__name__)

FA4_TILE_N = 128  # sm90's key tile at head size <= 128: the page size of FA4's TMA path
FA2_PAGE_MULTIPLE = 256
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
INSTALL_HINT = ("pip install 'phase2-attention[flash]' (flash-attn-4 and its CuTe DSL; see "
                "docs/phase2.md for the exact versions)")


class FlashAttnUnavailable(RuntimeError):
    """The flash_attn backend cannot run here; the message says why."""


class FlashAttnUnsupported(ValueError):
    """A cache or input FlashAttention's kernels do not take (dtype, block size)."""


@dataclass(frozen=True)
class FlashAttnApi:
    version: int  # 4: flash_attn.cute (FA4), 2: flash_attn (FA2)
    varlen: Callable
    with_kvcache: Callable | None = None  # FA2's decode entry point


def _put_cutlass_dsl_on_path() -> None:
    """nvidia-cutlass-dsl keeps ``cutlass`` in ``nvidia_cutlass_dsl/dsl_packages`` and adds that
    folder to ``sys.path`` from a ``.pth`` file, which ``pip install --target`` never runs."""
    if importlib.util.find_spec("cutlass") is not None:
        return
    spec = importlib.util.find_spec("nvidia_cutlass_dsl")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, "dsl_packages")
        if os.path.isdir(path) and path not in sys.path:
            logger.info("putting %s on sys.path (its .pth file was not run)", path)
            sys.path.insert(0, path)


@lru_cache(maxsize=1)
def _import_api() -> FlashAttnApi | str:
    """The importable FlashAttention, or why none is (import errors of FA4 and FA2)."""
    _put_cutlass_dsl_on_path()
    try:
        from flash_attn.cute import flash_attn_varlen_func as fa4_varlen

        return FlashAttnApi(4, fa4_varlen)
    except Exception as exc:  # noqa: BLE001 - any failure inside the CuTe DSL import chain
        fa4_error = f"flash_attn.cute (FA4): {type(exc).__name__}: {exc}"
    try:  # flash-attn 2 ships flash_attn/__init__.py; FA4 alone leaves a namespace package
        from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache

        return FlashAttnApi(2, flash_attn_varlen_func, flash_attn_with_kvcache)
    except Exception as exc:  # noqa: BLE001
        return f"{fa4_error}; flash_attn (FA2): {type(exc).__name__}: {exc}"


def flash_attn_unavailable_reason() -> str | None:
    """None when the backend can run, else the reason (no GPU, nothing importable)."""
    if not torch.cuda.is_available():
        return ("FlashAttention has only CUDA kernels and no CUDA device is present "
                "(use the sdpa backend on CPU)")
    api = _import_api()
    if isinstance(api, str):
        return f"no FlashAttention package is importable ({api}); install it with {INSTALL_HINT}"
    return None



def flash_attn_available() -> bool:
    return flash_attn_unavailable_reason() is None


def flash_attn_version() -> int | None:
    api = _import_api()
    return None if isinstance(api, str) else api.version


def check_dtype(dtype: torch.dtype) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise FlashAttnUnsupported(
            f"flash_attn backend: dtype {dtype} is not supported; FlashAttention's kernels take "
            f"float16 or bfloat16 only (use triton_paged or sdpa for {dtype})")


class FlashAttnBackend(AttentionBackend):
    """Paged attention through FlashAttention 4 (or 2). ``preferred_block_size`` is the page
    size of FA4's TMA path on Hopper; ``supported_block_sizes`` None means any power of two."""

    name = "flash_attn"
    preferred_block_size = FA4_TILE_N
    supported_block_sizes: tuple[int, ...] | None = None
    cudagraph_safe = True  # FA4: no host sync, bounds from the block-table width (see forward)

    def __init__(self):
        reason = flash_attn_unavailable_reason()
        if reason is not None:
            raise FlashAttnUnavailable(f"flash_attn backend unavailable: {reason}")
        api = _import_api()
        assert not isinstance(api, str)  # importable: flash_attn_unavailable_reason() said so
        self.api = api
        from ..ops.triton_paged import store_kvcache

        self._store = store_kvcache
        if self.api.version == 2:  # upstream FA2 pages only in multiples of 256 tokens
            self.preferred_block_size = FA2_PAGE_MULTIPLE
            self.cudagraph_safe = False
        logger.info("flash_attn backend: FlashAttention %d", self.api.version)

    def forward(self, layer, query, key, value, metadata):
        cache = check_paged(layer, metadata)
        check_dtype(cache.dtype)
        self._store(key, value, cache, metadata.slot_mapping)
        if self.api.version == 4:
            return self._forward_fa4(layer, query, cache, metadata)
        return self._forward_fa2(layer, query, cache, metadata)

    def _forward_fa4(self, layer, query, cache, metadata):
        return self.paged_attention(query, cache, metadata.query_start_loc, metadata.seq_lens,
                                    metadata.block_tables, max(metadata.query_lens_cpu),
                                    layer.scale)

    def paged_attention(self, query: torch.Tensor, cache: torch.Tensor,
                        query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                        block_tables: torch.Tensor, max_query_len: int, scale: float
                        ) -> torch.Tensor:
        """FA4 over a varlen batch whose K/V are already in ``cache``: query [T, Hq, D] are the
        last query_len of seq_len positions of each sequence. ``max_seqlen_k`` is left to FA4,
        which bounds it by the block-table width, so a captured CUDA graph stays valid as the
        contexts grow; sm90 has no split-KV (``num_splits=1``)."""
        out, _ = self.api.varlen(
            query, cache[0], cache[1], cu_seqlens_q=query_start_loc, seqused_k=seq_lens,
            page_table=block_tables, max_seqlen_q=max_query_len, softmax_scale=scale,
            causal=True, num_splits=1,
        )
        return out

    def _forward_fa2(self, layer, query, cache, metadata):
        if cache.shape[2] % FA2_PAGE_MULTIPLE:
            raise FlashAttnUnsupported(
                f"flash-attn 2 pages in multiples of {FA2_PAGE_MULTIPLE} tokens; this cache's "
                f"block size is {cache.shape[2]}: install flash-attn-4 or use triton_paged")
        out = torch.empty_like(query)
        nd = metadata.num_decodes
        if nd:
            assert self.api.with_kvcache is not None  # FA2's API (version 2) always has it
            out[:nd] = self.api.with_kvcache(
                query[:nd].unsqueeze(1), cache[0], cache[1],
                cache_seqlens=metadata.seq_lens[:nd], block_table=metadata.block_tables[:nd],
                softmax_scale=layer.scale, causal=True,
            ).squeeze(1)
        if metadata.num_prefills:
            q_loc = metadata.query_start_loc[nd:] - nd
            k_loc = torch.zeros_like(q_loc)
            k_loc[1:] = metadata.seq_lens[nd:].cumsum(0)
            out[nd:] = self.api.varlen(
                query[nd:], cache[0], cache[1], cu_seqlens_q=q_loc, cu_seqlens_k=k_loc,
                max_seqlen_q=max(metadata.query_lens_cpu[nd:]),
                max_seqlen_k=max(metadata.seq_lens_cpu[nd:]),
                softmax_scale=layer.scale, causal=True, block_table=metadata.block_tables[nd:],
            )
        return out
