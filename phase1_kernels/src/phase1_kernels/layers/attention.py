"""The attention layer, its metadata, and the backend interface it delegates to.

The model's forward takes one *flattened* batch: all sequences' new tokens concatenated into
``[num_tokens, ...]`` tensors, described by an ``AttentionMetadata``. The same forward therefore
serves prefill, decode and mixed batches. The ``Attention`` layer only reshapes and delegates to
an ``AttentionBackend`` object injected at construction: phase 1 ships the naive backend below
(explicit ``softmax(QK^T)V`` with a contiguous per-sequence KV cache); phase 2 registers SDPA,
flash-attn and paged backends under their names without copying the model.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass
class AttentionMetadata:
    """One flattened varlen batch of ``len(seq_lens)`` sequences.

    Sequence ``i`` contributes tokens ``query_start_loc[i]:query_start_loc[i+1]`` of the batch;
    after this step it holds ``seq_lens[i]`` tokens in total, so its first
    ``seq_lens[i] - query_len`` tokens are context already in the KV cache.
    """

    query_start_loc: torch.Tensor  # [B + 1] int32, on the model's device
    seq_lens: torch.Tensor  # [B] int32, on the model's device
    query_lens_cpu: list[int]
    seq_lens_cpu: list[int]
    cache_rows: list[int] | None = None  # contiguous cache: row of each sequence (None: no cache)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens_cpu)

    @property
    def max_query_len(self) -> int:
        return max(self.query_lens_cpu, default=0)

    @property
    def max_seq_len(self) -> int:
        return max(self.seq_lens_cpu, default=0)

    @classmethod
    def build(
        cls,
        query_lens: list[int],
        seq_lens: list[int] | None = None,
        cache_rows: list[int] | None = None,
        device: torch.device | str = "cpu",
    ) -> "AttentionMetadata":
        """Metadata for sequences with ``query_lens`` new tokens (default: no cached context)."""
        seq_lens = list(query_lens) if seq_lens is None else list(seq_lens)
        if len(seq_lens) != len(query_lens):
            raise ValueError(f"{len(query_lens)} query lengths but {len(seq_lens)} sequence lengths")
        for q, s in zip(query_lens, seq_lens):
            if q < 0 or s < q:
                raise ValueError(f"query length {q} must be in [0, sequence length {s}]")
        starts = [0]
        for q in query_lens:
            starts.append(starts[-1] + q)
        return cls(
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
            query_lens_cpu=list(query_lens),
            seq_lens_cpu=seq_lens,
            cache_rows=None if cache_rows is None else list(cache_rows),
        )


class AttentionBackend(ABC):
    """Computes attention for one layer over a flattened batch, reading/writing that layer's
    KV cache (``layer.kv_cache``, whose layout the backend defines)."""

    name: str = "abstract"
    # May a CUDA graph capture this backend's forward? Only if it reads every per-step value
    # from device tensors (a graph freezes host values such as ``seq_lens_cpu`` at capture).
    cudagraph_safe: bool = False

    def build_metadata(self, metadata: AttentionMetadata) -> AttentionMetadata:
        """Called once per step, before the forward of every layer: precompute what the layers
        share (split sizes, scheduling tables). The default needs nothing."""
        return metadata

    def fuses_rotary(self, rotary: nn.Module) -> bool:
        """Whether ``forward_rotary`` applies this rotary layer itself (fused into the K/V-cache
        store, say). The default: no, the attention layer rotates q and k first."""
        return False

    def forward_rotary(self, layer: "Attention", query: torch.Tensor, key: torch.Tensor,
                       value: torch.Tensor, metadata: AttentionMetadata, positions: torch.Tensor,
                       rotary: nn.Module) -> torch.Tensor:
        """``forward`` on q and k not yet rotated: called only where ``fuses_rotary(rotary)``."""
        raise NotImplementedError(f"{self.name} does not fuse the rotary embedding")

    @abstractmethod
    def forward(
        self,
        layer: "Attention",
        query: torch.Tensor,  # [T, num_heads, head_size]
        key: torch.Tensor,  # [T, num_kv_heads, head_size]
        value: torch.Tensor,  # [T, num_kv_heads, head_size]
        metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [T, num_heads, head_size]
        ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def causal_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> torch.Tensor:
    """Reference attention for one sequence: query [q, Hq, D] are the last q of the
    k positions in key/value [k, Hk, D]; GQA by repeating kv heads; fp32 softmax. The full
    [Hq, q, k] score matrix is materialised: O(q*k) memory, the cost flash attention avoids."""
    num_q, num_heads, _ = query.shape
    num_k, num_kv_heads, _ = key.shape
    group = num_heads // num_kv_heads
    k = key.repeat_interleave(group, dim=1).transpose(0, 1).float()  # [Hq, k, D]
    v = value.repeat_interleave(group, dim=1).transpose(0, 1).float()
    q = query.transpose(0, 1).float()  # [Hq, q, D]
    scores = torch.matmul(q, k.transpose(1, 2)) * scale  # [Hq, q, k]
    context = num_k - num_q
    rows = torch.arange(num_q, device=query.device).unsqueeze(1) + context
    cols = torch.arange(num_k, device=query.device).unsqueeze(0)
    scores = scores.masked_fill(cols > rows, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v).transpose(0, 1).to(query.dtype)  # [q, Hq, D]


class NaiveAttentionBackend(AttentionBackend):
    """Phase 1: explicit attention per sequence, KV in a contiguous cache.

    ``layer.kv_cache`` is ``None`` (no cache: every sequence is a fresh prompt) or a tensor
    ``[2, max_seqs, max_len, num_kv_heads, head_size]``; ``metadata.cache_rows[i]`` is the row
    of sequence ``i``. Each sequence reserves ``max_len`` slots whether it uses them or not: the
    waste that paged attention (phase 2) removes.
    """

    name = "naive"

    def forward(self, layer, query, key, value, metadata):
        out = torch.empty_like(query)
        cache = layer.kv_cache
        if cache is not None and metadata.cache_rows is None:
            raise ValueError("the layer has a KV cache but the metadata names no cache rows")
        start = 0
        for i, (q_len, s_len) in enumerate(zip(metadata.query_lens_cpu, metadata.seq_lens_cpu)):
            end = start + q_len
            if cache is None:
                if s_len != q_len:
                    raise ValueError(
                        f"sequence {i} has {s_len - q_len} context tokens but no KV cache was given"
                    )
                k, v = key[start:end], value[start:end]
            else:
                row = metadata.cache_rows[i]
                if s_len > cache.shape[2]:
                    raise ValueError(f"sequence {i} needs {s_len} cache slots, the cache holds {cache.shape[2]}")
                cache[0, row, s_len - q_len : s_len] = key[start:end]
                cache[1, row, s_len - q_len : s_len] = value[start:end]
                k, v = cache[0, row, :s_len], cache[1, row, :s_len]
            if q_len:
                out[start:end] = causal_attention(query[start:end], k, v, layer.scale)
            start = end
        return out


_BACKENDS: dict[str, Callable[[], AttentionBackend]] = {"naive": NaiveAttentionBackend}
BACKEND_ENV_VAR = "LIGHTVLLM_ATTENTION_BACKEND"


def register_backend(name: str, factory: Callable[[], AttentionBackend]) -> None:
    """Make a backend selectable by name (phase 2 registers its backends here)."""
    _BACKENDS[name] = factory


def registered_backends() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(backend: str | AttentionBackend | None = None) -> AttentionBackend:
    """An instance for a name (or the env var ``LIGHTVLLM_ATTENTION_BACKEND``, default naive)."""
    if isinstance(backend, AttentionBackend):
        return backend
    name = backend or os.environ.get(BACKEND_ENV_VAR) or "naive"
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; registered: {registered_backends()}")
    return _BACKENDS[name]()


# (layer, query, key, value, metadata) -> output: what every Attention layer calls instead of its
# backend while ``attention_override`` is active (phase 3's piecewise CUDA graphs split there)
AttentionCall = Callable[["Attention", torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata],
                         torch.Tensor]
_OVERRIDE: contextvars.ContextVar[AttentionCall | None] = contextvars.ContextVar(
    "attention_override", default=None)


@contextlib.contextmanager
def attention_override(call: AttentionCall) -> Iterator[None]:
    """Within this block every ``Attention`` layer hands its reshaped q/k/v to ``call`` instead
    of its backend: the injection point where a later phase cuts the forward pass into the parts
    around attention (captured as CUDA graphs) and attention itself (run eagerly)."""
    token = _OVERRIDE.set(call)
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


class Attention(nn.Module):
    """Multi-head / grouped-query attention over a flattened batch, through a backend."""

    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int,
                 backend: AttentionBackend, layer_idx: int = 0):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        self.num_heads, self.head_size, self.num_kv_heads = num_heads, head_size, num_kv_heads
        self.scale = scale
        self.backend = backend
        self.layer_idx = layer_idx
        self.kv_cache: torch.Tensor | None = None  # bound by whoever owns the cache memory

    def forward(self, query, key, value, metadata: AttentionMetadata,
                positions: torch.Tensor | None = None, rotary: nn.Module | None = None) -> torch.Tensor:
        """q [T, Hq*D], k/v [T, Hk*D] -> [T, Hq*D]. With ``rotary`` (and ``positions``), q and k
        are not rotated yet: the backend rotates them inside its cache store where it can
        (``fuses_rotary``), else they are rotated here first."""
        override = _OVERRIDE.get()
        fused = rotary is not None and override is None and self.backend.fuses_rotary(rotary)
        if rotary is not None and not fused:
            query, key = rotary(positions, query, key)
        tokens = query.shape[0]
        q = query.reshape(tokens, self.num_heads, self.head_size)
        k = key.reshape(tokens, self.num_kv_heads, self.head_size)
        v = value.reshape(tokens, self.num_kv_heads, self.head_size)
        if fused:
            assert positions is not None and rotary is not None
            out = self.backend.forward_rotary(self, q, k, v, metadata, positions, rotary)
        else:
            out = (override or self.backend.forward)(self, q, k, v, metadata)
        return out.reshape(tokens, self.num_heads * self.head_size)

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_size={self.head_size}, "
                f"backend={self.backend.name}")
