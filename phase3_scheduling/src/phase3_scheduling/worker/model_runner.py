"""The model runner: one step message in, one forward pass, sampled tokens out.

``execute_model`` reads as its steps: ``update_states`` (apply the message's deltas to the
persistent batch), ``plan`` (query/sequence lengths, decodes first, a CUDA-graph size),
``prepare_inputs`` (named views of one pinned buffer, one copy to the device), ``run`` (graph
replay for pure decode steps, eager otherwise) and ``sample``.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from phase1_kernels.layers.attention import AttentionBackend, AttentionMetadata
from phase2_attention import PagedAttentionMetadata, allocate_kv_cache
from phase2_attention.kv_cache import KVCacheModel
from phase2_attention.kv_cache_manager import cdiv

from ..engine_config import EngineConfig
from ..protocol import ModelRunnerOutput, SampledLogprobs, SchedulerOutput
from ..sampler import Sampler, SamplingInputs
from .cuda_graphs import DecodeGraphs
from .input_batch import CachedRequestState, InputBatch
from .staging import StepStaging

logger = logging.getLogger(__name__)


class RunnerModel(KVCacheModel, Protocol):
    """The model a runner drives: ``model(input_ids, positions, metadata)`` returns hidden
    states (None on a pipeline stage before the last), and ``attn_backend`` is its layers'."""

    attn_backend: AttentionBackend


@dataclass
class StepPlan:
    states: list[CachedRequestState]  # batch order: decodes first
    query_lens: list[int]
    seq_lens: list[int]
    num_decodes: int
    graph_size: int | None  # padded batch of a captured decode graph, or None (eager)
    sample_rows: list[int]  # rows whose last token reaches the end of the known tokens

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)

    @property
    def num_rows(self) -> int:
        return self.graph_size or len(self.states)

    @property
    def num_padded_tokens(self) -> int:
        return self.graph_size or self.num_tokens


class ModelRunner:
    def __init__(self, config: EngineConfig, model: RunnerModel, device: torch.device):
        self.config = config
        self.model = model
        self.device = device
        sched = config.scheduler_config
        self.block_size = config.cache_config.block_size
        self.max_blocks_per_seq = cdiv(sched.max_model_len, self.block_size)
        max_tokens = max(sched.max_num_batched_tokens, sched.max_num_seqs)
        self.batch = InputBatch(sched.max_num_seqs, self.max_blocks_per_seq, device)
        self.staging = StepStaging(max_tokens, sched.max_num_seqs, self.max_blocks_per_seq, device)
        self.backend = model.attn_backend
        self.sampler = Sampler()
        self.graphs = DecodeGraphs(self)
        self.timings: dict[str, float] = defaultdict(float)
        self.num_blocks = 0

    # ---- start-up ------------------------------------------------------------------------------
    def initialize_cache(self, num_blocks: int) -> None:
        allocate_kv_cache(self.model, num_blocks, self.block_size)
        self.num_blocks = num_blocks
        logger.info("KV cache: %d blocks of %d tokens", num_blocks, self.block_size)

    def warm_up_and_capture(self) -> None:
        """On CUDA: compile kernel variants now (not in users' requests), then capture decode
        graphs if the backend allows it and ``enforce_eager`` is off."""
        if self.device.type != "cuda":
            return
        self.graphs.warm_up()
        if self.config.enforce_eager:
            return
        if not self.backend.cudagraph_safe:
            logger.info("backend %s is not CUDA-graph safe: decode steps run eagerly",
                        self.backend.name)
            return
        self.graphs.capture()

    # ---- one step ------------------------------------------------------------------------------
    @torch.inference_mode()
    def execute_model(self, step: SchedulerOutput) -> ModelRunnerOutput:
        t0 = time.perf_counter()
        self.batch.update(step)
        if step.is_empty:
            return ModelRunnerOutput()
        plan = self.plan(step)
        metadata = self.prepare_inputs(plan)
        t1 = time.perf_counter()
        logits = self.run(plan, metadata)
        output = ModelRunnerOutput() if logits is None else self.sample(plan, logits)
        kind = "decode" if plan.graph_size is not None else "eager"
        self.timings[kind + "_prepare"] += t1 - t0
        self.timings[kind + "_run"] += time.perf_counter() - t1
        self.timings[kind + "_steps"] += 1
        return output

    def plan(self, step: SchedulerOutput) -> StepPlan:
        states = [self.batch.requests[rid] for rid in step.req_ids]
        query_lens = list(step.num_scheduled_tokens)
        seq_lens = [s.num_computed_tokens + n for s, n in zip(states, query_lens)]
        num_decodes = 0
        while (num_decodes < len(states) and query_lens[num_decodes] == 1
               and seq_lens[num_decodes] > 1):
            num_decodes += 1
        graph_size = self.graphs.size_for(len(states)) if num_decodes == len(states) else None
        sample_rows = [i for i, (s, end) in enumerate(zip(states, seq_lens))
                       if end == len(s.token_ids)]
        return StepPlan(states, query_lens, seq_lens, num_decodes, graph_size, sample_rows)

    def prepare_inputs(self, plan: StepPlan) -> AttentionMetadata:
        """Fill the step's host views (padding rows and tokens for a graph), copy once."""
        n, nt, nr, batch = plan.num_tokens, plan.num_padded_tokens, plan.num_rows, len(plan.states)
        views = self.staging.views(nt, nr)
        starts = [s.num_computed_tokens for s in plan.states]
        if plan.num_decodes == batch:
            positions = np.asarray(starts, dtype=np.int64)
            ids = [s.token_ids[p] for s, p in zip(plan.states, starts)]
        else:
            positions = np.concatenate([np.arange(p, p + q) for p, q in zip(starts, plan.query_lens)])
            ids = [t for s, p, q in zip(plan.states, starts, plan.query_lens)
                   for t in s.token_ids[p:p + q]]
        rows = np.asarray([s.row for s in plan.states])
        token_rows = np.repeat(rows, plan.query_lens)
        table = self.batch.block_table
        bs = self.block_size
        slots = table[token_rows, positions // bs].astype(np.int64) * bs + positions % bs
        _fill(views["input_ids"], ids, 0)
        _fill(views["positions"], positions, 0)
        _fill(views["slot_mapping"], slots, -1)
        _fill(views["seq_lens"], plan.seq_lens, 1)
        qsl = views["query_start_loc"]
        qsl[0] = 0
        np.cumsum(plan.query_lens + [1] * (nr - batch), out=qsl[1:])
        table_view = self.staging.block_table_view(nr)
        table_view[:batch] = table[rows]
        table_view[batch:] = 0
        self.staging.copy_to_device(nr)
        dev = self.staging.dev
        metadata = PagedAttentionMetadata(
            query_start_loc=dev.query_start_loc[: batch + 1], seq_lens=dev.seq_lens[:batch],
            query_lens_cpu=plan.query_lens, seq_lens_cpu=plan.seq_lens,
            slot_mapping=dev.slot_mapping[:n], block_tables=dev.block_tables[:batch],
            block_size=bs, num_decodes=plan.num_decodes)
        self._last_token_index = (qsl[1:batch + 1] - 1).tolist()
        return self.backend.build_metadata(metadata)

    def run(self, plan: StepPlan, metadata: AttentionMetadata) -> torch.Tensor | None:
        """Logits of the rows to sample (None when only mid-prompt chunks ran, or when the
        model is a pipeline stage before the last: it returns no hidden states)."""
        if plan.graph_size is not None:
            return self.graphs.replay(plan.graph_size)[plan.sample_rows]
        n = plan.num_tokens
        dev = self.staging.dev
        hidden = self.model(dev.input_ids[:n], dev.positions[:n], metadata)
        if hidden is None or not plan.sample_rows:
            return None
        last = [self._last_token_index[i] for i in plan.sample_rows]
        index = torch.tensor(last, dtype=torch.long).to(self.device, non_blocking=True)
        return self.model.compute_logits(hidden[index])

    def sample(self, plan: StepPlan, logits: torch.Tensor) -> ModelRunnerOutput:
        states = [plan.states[i] for i in plan.sample_rows]
        inputs = SamplingInputs(
            params=[s.params for s in states],
            output_token_ids=[s.output_token_ids for s in states],
            prompt_token_ids=[s.token_ids[:s.prompt_len] for s in states],
            generators=[s.generator for s in states],
            min_tokens_block=[s.params.min_tokens_block
                              if len(s.token_ids) - s.prompt_len < s.params.min_tokens else []
                              for s in states])
        result = self.sampler(logits, inputs)
        logprobs = None
        if result.logprobs is not None:  # then the sampler filled ranks and top_logprobs too
            assert result.ranks is not None and result.top_logprobs is not None
            logprobs = SampledLogprobs(result.logprobs, result.ranks,
                                       [[t for t, _ in top] for top in result.top_logprobs],
                                       [[lp for _, lp in top] for top in result.top_logprobs])
        return ModelRunnerOutput([s.req_id for s in states], result.token_ids, logprobs)


def _fill(view: np.ndarray, values, pad: int) -> None:
    """``values`` into the head of ``view``, ``pad`` into the rest (graph padding)."""
    count = len(values)
    view[:count] = values
    view[count:] = pad
