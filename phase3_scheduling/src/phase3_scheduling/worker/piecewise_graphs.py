"""Piecewise CUDA graphs for mixed prefill+decode steps: everything but attention is replayed.

A decode step has one query token per sequence, so its whole forward pass fits one graph. A
step that carries a prompt chunk does not: its attention depends on how the tokens split into
sequences, which changes every step, while everything else (embedding, norms, projections,
RoPE, the MLP) depends only on the number of tokens. So the forward pass is cut at each
attention layer (vLLM's "piecewise" graphs): for a padded token count ``T`` the parts between
attentions are captured as ``num_layers + 1`` graphs, and attention runs eagerly between their
replays with the step's real metadata. A 32-layer 8B step then launches 33 graphs and about
four attention kernels per layer instead of ~15 kernels per layer from Python.

The cut uses phase 1's ``attention_override``: during capture each attention layer ends the
current graph, and its q/k/v are copied (inside the graph) into buffers shared by all layers and
sizes; at replay attention reads those buffers and writes the shared output buffer that the next
graph reads. Padding tokens (``T`` minus the real count) have slot -1 and are not attended.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from phase1_kernels.layers.attention import Attention, AttentionMetadata, attention_override

from .cuda_graphs import PaddedSizes

if TYPE_CHECKING:
    from .model_runner import ModelRunner

logger = logging.getLogger(__name__)


def mixed_graph_sizes(max_tokens: int, max_num_batched_tokens: int) -> list[int]:
    """Token counts to capture: 16, 32, 64, 128, then every 64 to 512, then every 128, up to
    ``max_tokens`` (``--mixed-cuda-graph-max-tokens``) and the step's token budget."""
    limit = min(max_tokens, max_num_batched_tokens)
    sizes = [16, 32, 64, 128] + list(range(192, 513, 64)) + list(range(640, limit + 1, 128))
    return [s for s in sizes if s <= limit]


@dataclass
class _Buffers:
    """q/k/v in, attention output out: shared by every layer and every captured size."""

    query: torch.Tensor  # [max_tokens, heads, head_size]
    key: torch.Tensor  # [max_tokens, kv_heads, head_size]
    value: torch.Tensor
    out: torch.Tensor  # [max_tokens, heads, head_size]


@dataclass
class _Pieces:
    graphs: list[torch.cuda.CUDAGraph]  # num_attention_layers + 1
    layers: list[Attention]  # the attention run after graphs[i]
    hidden: torch.Tensor  # [T, hidden]: the last graph's output


class MixedGraphs(PaddedSizes):
    def __init__(self, runner: "ModelRunner"):
        self.runner = weakref.proxy(runner)
        self.pieces: dict[int, _Pieces] = {}
        self._sizes: list[int] = []
        self._buffers: _Buffers | None = None
        self._pool: Any = None  # the memory pool every piece shares (torch.cuda.graph_pool_handle)
        self._stream: torch.cuda.Stream | None = None
        self.timings: dict[str, float] = {}

    # ---- capture -------------------------------------------------------------------------------
    def capture(self, sizes: list[int]) -> None:
        """Capture each size, largest first, all in one memory pool."""
        if not sizes:
            return
        start = time.perf_counter()
        self._pool = torch.cuda.graph_pool_handle()
        self._stream = torch.cuda.Stream()  # one capture stream: cuBLAS keeps its workspace
        for size in tqdm(sorted(sizes, reverse=True), desc="capturing mixed-step graphs",
                         unit="graph"):
            pieces = self._capture_size(size)
            if pieces is None:
                logger.info("the model returns no hidden states: mixed steps run eagerly")
                return
            self.pieces[size] = pieces
        self._sizes = sorted(self.pieces)
        torch.cuda.synchronize()
        self.timings["mixed_graph_capture"] = time.perf_counter() - start
        logger.info("captured piecewise graphs for mixed steps of %d..%d tokens (%d sizes) in "
                    "%.2f s", self._sizes[0], self._sizes[-1], len(self._sizes),
                    self.timings["mixed_graph_capture"])

    def _ensure_buffers(self, query: torch.Tensor, key: torch.Tensor) -> _Buffers:
        if self._buffers is None:  # sized by the first (largest) capture
            tokens = query.shape[0]
            q = query.new_empty((tokens,) + tuple(query.shape[1:]))
            k = key.new_empty((tokens,) + tuple(key.shape[1:]))
            self._buffers = _Buffers(q, k, torch.empty_like(k), torch.zeros_like(q))
        return self._buffers

    def _stage(self, query, key, value) -> _Buffers:
        """Copy one layer's q/k/v into the shared buffers (captured: the graph does it)."""
        buffers = self._ensure_buffers(query, key)
        tokens = query.shape[0]
        buffers.query[:tokens].copy_(query)
        buffers.key[:tokens].copy_(key)
        buffers.value[:tokens].copy_(value)
        return buffers

    @torch.inference_mode()
    def _capture_size(self, size: int) -> _Pieces | None:
        runner = self.runner
        dev = runner.staging.dev
        dev.input_ids[:size].zero_()
        dev.positions[:size].zero_()
        metadata = AttentionMetadata.build([size], device=runner.device)  # attention is cut out

        def staged_only(layer, query, key, value, _metadata):  # warm-up: no attention
            return self._stage(query, key, value).out[:query.shape[0]]

        stream = self._stream
        assert stream is not None  # set by capture()
        with torch.cuda.stream(stream), attention_override(staged_only):
            runner.model(dev.input_ids[:size], dev.positions[:size], metadata)  # kernels chosen now
        torch.cuda.synchronize()

        graphs: list[torch.cuda.CUDAGraph] = []
        layers: list[Attention] = []

        def cut(layer, query, key, value, _metadata):
            buffers = self._stage(query, key, value)  # the last kernels of this piece
            graphs[-1].capture_end()
            layers.append(layer)
            graphs.append(torch.cuda.CUDAGraph())
            graphs[-1].capture_begin(pool=self._pool)
            return buffers.out[:query.shape[0]]

        with torch.cuda.stream(stream):
            graphs.append(torch.cuda.CUDAGraph())
            graphs[-1].capture_begin(pool=self._pool)
            try:
                with attention_override(cut):
                    hidden = runner.model(dev.input_ids[:size], dev.positions[:size], metadata)
            finally:
                graphs[-1].capture_end()
        torch.cuda.current_stream().wait_stream(stream)
        if not isinstance(hidden, torch.Tensor):
            return None
        return _Pieces(graphs, layers, hidden)

    # ---- replay --------------------------------------------------------------------------------
    def replay(self, size: int, num_tokens: int, metadata: AttentionMetadata) -> torch.Tensor:
        """Run a step of ``num_tokens`` real tokens (inputs already in the runner's device
        buffers, padded to ``size``); returns the hidden states of all ``size`` rows."""
        pieces = self.pieces[size]
        buffers = self._buffers
        assert buffers is not None
        q, k, v = buffers.query[:num_tokens], buffers.key[:num_tokens], buffers.value[:num_tokens]
        out = buffers.out[:num_tokens]
        for graph, layer in zip(pieces.graphs, pieces.layers):
            graph.replay()
            out.copy_(layer.backend.forward(layer, q, k, v, metadata))
        pieces.graphs[-1].replay()
        return pieces.hidden
