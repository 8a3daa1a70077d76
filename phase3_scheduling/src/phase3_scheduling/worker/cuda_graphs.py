"""CUDA graphs of the decode step, captured at padded batch sizes into one shared memory pool.

Launching the ~500 kernels of a decode step from Python costs more than the GPU work at small
batch; a graph replay costs one launch. Graphs read the runner's persistent device inputs, so a
replay only needs those tensors refreshed (``StepStaging.copy_to_device``).
"""

from __future__ import annotations

import itertools
import logging
import time
import weakref
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from phase2_attention import PagedAttentionMetadata

if TYPE_CHECKING:
    from .model_runner import ModelRunner

logger = logging.getLogger(__name__)


def graph_batch_sizes(max_num_seqs: int, requested: list[int] | None = None) -> list[int]:
    """The decode batch sizes to capture: ``requested`` (``--cuda-graph-sizes``) or 1, 2, 4,
    8 then every 16, at most ``max_num_seqs`` (and 512). A decode batch runs in the smallest
    graph that holds it (padded); a batch larger than every size runs eagerly."""
    limit = min(max_num_seqs, 512)
    sizes = requested if requested is not None else [1, 2, 4, 8] + list(range(16, limit + 1, 16))
    return [s for s in sizes if s <= limit]


class PaddedSizes:
    """The captured sizes of a graph family; a step runs in the smallest one that holds it."""

    _sizes: list[int]

    @property
    def sizes(self) -> list[int]:
        return self._sizes

    def size_for(self, count: int) -> int | None:
        """The smallest captured size >= ``count`` (None: larger than all, run eagerly)."""
        return next((size for size in self._sizes if size >= count), None)


class DecodeGraphs(PaddedSizes):
    def __init__(self, runner: "ModelRunner"):
        self.runner = weakref.proxy(runner)  # no cycle: the runner's memory goes when it does
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._sizes: list[int] = []
        self.timings: dict[str, float] = {}  # seconds of "warm_up" and "graph_capture"

    def replay(self, size: int) -> torch.Tensor:
        graph, logits = self.graphs[size]
        graph.replay()
        return logits

    def _metadata(self, q_lens: list[int], seq_lens: list[int], slots: torch.Tensor,
                  tables: torch.Tensor, starts: torch.Tensor,
                  lens: torch.Tensor) -> PagedAttentionMetadata:
        num_decodes = sum(1 for q, s in zip(q_lens, seq_lens) if q == 1 and s > 1)
        return PagedAttentionMetadata(
            query_start_loc=starts, seq_lens=lens, query_lens_cpu=q_lens, seq_lens_cpu=seq_lens,
            slot_mapping=slots, block_tables=tables, block_size=self.runner.block_size,
            num_decodes=num_decodes)

    def warm_up_shapes(self) -> list[tuple[list[int], list[int]]]:
        """(query lengths, sequence lengths) of the warm-up batches: a short and a long prompt,
        decodes next to a chunk, a decode next to a prompt."""
        sched = self.runner.config.scheduler_config
        limit = min(sched.max_num_batched_tokens, sched.max_model_len - 1)
        return [([17], [17]), ([min(512, limit)], [min(512, limit)]),
                ([1, 1, 16], [40, 3, 48]), ([1, 23], [77, 55])]

    def run_shape(self, q_lens: list[int], seq_lens: list[int]) -> None:
        """One forward pass and its logits for a batch of this shape, storing nothing: every
        slot is -1, block tables point at the null block."""
        runner, device = self.runner, self.runner.device
        tokens, batch = sum(q_lens), len(q_lens)
        starts = torch.tensor([0] + list(itertools.accumulate(q_lens)), dtype=torch.int32)
        metadata = self._metadata(
            q_lens, seq_lens, torch.full((tokens,), -1, dtype=torch.long, device=device),
            torch.zeros(batch, runner.max_blocks_per_seq, dtype=torch.int32, device=device),
            starts.to(device), torch.tensor(seq_lens, dtype=torch.int32, device=device))
        positions = torch.cat([torch.arange(s - q, s) for q, s in zip(q_lens, seq_lens)])
        metadata = runner.backend.build_metadata(metadata)
        hidden = runner.model(torch.zeros(tokens, dtype=torch.long, device=device),
                              positions.to(device), metadata)
        runner.model.compute_logits(hidden[starts[1:].long().to(device) - 1])

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Run prefill, chunked-prefill and mixed batches once so that Triton compiles its kernel
        variants now (or finds them compiled ahead, ``compile_ahead.py``)."""
        start = time.perf_counter()
        for q_lens, seq_lens in self.warm_up_shapes():
            self.run_shape(q_lens, seq_lens)
        torch.cuda.synchronize()
        self.timings["warm_up"] = time.perf_counter() - start

    def capture_sizes(self) -> list[int]:
        sched = self.runner.config.scheduler_config
        return graph_batch_sizes(sched.max_num_seqs, self.runner.config.cuda_graph_sizes)

    def decode_inputs(self, size: int) -> tuple:
        """The forward's arguments for a decode step of ``size`` sequences on the persistent
        device inputs (what a graph of that size captures): one token each, nothing stored."""
        runner = self.runner
        dev = runner.staging.dev
        dev.query_start_loc[: size + 1].copy_(torch.arange(size + 1, dtype=torch.int32))
        metadata = self._metadata([1] * size, [2] * size, dev.slot_mapping[:size],
                                  dev.block_tables[:size], dev.query_start_loc[: size + 1],
                                  dev.seq_lens[:size])
        metadata = runner.backend.build_metadata(metadata)
        return dev.input_ids[:size], dev.positions[:size], metadata

    def reset_decode_inputs(self) -> None:
        dev = self.runner.staging.dev
        dev.slot_mapping.fill_(-1)
        dev.seq_lens.fill_(1)
        dev.block_tables.zero_()

    def capture(self) -> None:
        """One decode step per padded batch size, largest first, into a shared pool."""
        start = time.perf_counter()
        runner = self.runner
        self.reset_decode_inputs()
        pool = None
        sizes = self.capture_sizes()
        if not sizes:
            logger.info("no CUDA graph size fits max_num_seqs: decode steps run eagerly")
            return
        for size in tqdm(sorted(sizes, reverse=True), desc="capturing CUDA graphs", unit="graph"):
            args = self.decode_inputs(size)
            with torch.inference_mode():
                runner.model.compute_logits(runner.model(*args))  # warm-up (autotune, cuBLAS)
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    logits = runner.model.compute_logits(runner.model(*args))
            pool = graph.pool()
            self.graphs[size] = (graph, logits)
        self._sizes = sorted(self.graphs)
        torch.cuda.synchronize()
        self.timings["graph_capture"] = time.perf_counter() - start
        logger.info("captured %d decode graphs (batch sizes %d..%d) in %.2f s", len(self._sizes),
                    self._sizes[0], self._sizes[-1], self.timings["graph_capture"])
