"""The model runner: one step message in, one forward pass, sampled tokens out.

``submit`` reads as its steps: update the persistent batch with the message's deltas, ``plan``
(query/sequence lengths, decodes first, a CUDA-graph size), ``prepare_inputs`` (named views of
one pinned buffer, one copy to the device), ``run`` (a whole-step graph for pure decode steps,
piecewise graphs around eager attention for mixed steps up to a token count, eager otherwise)
and ``sample``. It returns an ``AsyncStepOutput`` without waiting for the device:
the sampled ids stay on the device (the next step reads the ones it needs from there) and are
copied to the host on a side stream; ``result()`` waits for that copy. ``execute_model`` is
``submit(step).result()``.
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
from phase1_kernels.layers.gpu_linear import tune_small_batch_linears
from phase2_attention import PagedAttentionMetadata, allocate_kv_cache
from phase2_attention.kv_cache import KVCacheModel
from phase2_attention.kv_cache_manager import cdiv

from ..engine_config import EngineConfig
from ..protocol import ModelRunnerOutput, SchedulerOutput, WireSamplingParams
from ..sampler import Sampler, SamplingInputs, needs_token_history
from ..sampling_params import SamplingParams
from .async_output import AsyncStepOutput, ReadyOutput, StepOutput
from .compile_ahead import compile_start_up_kernels
from .cuda_graphs import DecodeGraphs
from .input_batch import CachedRequestState, InputBatch, WorkerStateError
from .piecewise_graphs import MixedGraphs, mixed_graph_sizes
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
    graph_size: int | None  # padded batch of a captured decode graph, or None
    mixed_size: int | None  # padded token count of captured mixed-step graphs, or None
    sample_rows: list[int]  # rows whose last token reaches the end of the known tokens
    starts: list[int]  # per row: position of its first token this step

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)

    @property
    def num_rows(self) -> int:
        return self.graph_size or len(self.states)

    @property
    def num_padded_tokens(self) -> int:
        return self.graph_size or self.mixed_size or self.num_tokens

    @property
    def kind(self) -> str:
        """How the step runs: ``decode`` (whole graph), ``mixed`` (piecewise) or ``eager``."""
        if self.graph_size is not None:
            return "decode"
        return "mixed" if self.mixed_size is not None else "eager"


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
        self.mixed = MixedGraphs(self)
        self.timings: dict[str, float] = defaultdict(float)
        self.num_blocks = 0
        # the previous step's sampled ids on the device, and each request's row in them
        self._prev_sampled: torch.Tensor | None = None
        self._prev_row: dict[str, int] = {}
        self._copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

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
        capture_decode = not self.config.enforce_eager and self.backend.cudagraph_safe
        ahead = compile_start_up_kernels(self, capture_decode)
        if ahead is not None:
            self.graphs.timings["compile_ahead"] = ahead.seconds
        self.graphs.warm_up()
        if isinstance(self.model, torch.nn.Module):  # pick each decode GEMM by measurement
            start = time.perf_counter()
            tune_small_batch_linears(self.model, self.config.scheduler_config.max_num_seqs)
            self.graphs.timings["gemm_tuning"] = time.perf_counter() - start
        if self.config.enforce_eager:
            return
        if self.backend.cudagraph_safe:
            self.graphs.capture()
        else:
            logger.info("backend %s is not CUDA-graph safe: decode steps run eagerly",
                        self.backend.name)
        # attention runs eagerly between the pieces, so any backend may use them; a pipeline
        # stage's forward sends and receives, and its stages must not capture apart
        sched = self.config.scheduler_config
        if self.config.parallel_config.pipeline_parallel_size == 1:
            self.mixed.capture(mixed_graph_sizes(self.config.mixed_cuda_graph_max_tokens,
                                                 sched.max_num_batched_tokens))
        capture = self.mixed.timings.get("mixed_graph_capture", 0.0)
        self.graphs.timings["graph_capture"] = self.graphs.timings.get("graph_capture", 0.0) + capture

    # ---- one step ------------------------------------------------------------------------------
    @torch.inference_mode()
    def execute_model(self, step: SchedulerOutput) -> ModelRunnerOutput:
        return self.submit(step).result()

    @torch.inference_mode()
    def submit(self, step: SchedulerOutput) -> StepOutput:
        """Launch one step; its output is read later (``result()``)."""
        t0 = time.perf_counter()
        self.batch.update(step)
        if step.is_empty:
            return ReadyOutput(ModelRunnerOutput())
        plan = self.plan(step)
        metadata = self.prepare_inputs(plan)
        t1 = time.perf_counter()
        logits = self.run(plan, metadata)
        kind = plan.kind
        output = self._no_output() if logits is None else self.sample(plan, logits, kind)
        self.timings[kind + "_prepare"] += t1 - t0
        self.timings[kind + "_run"] += time.perf_counter() - t1
        self.timings[kind + "_steps"] += 1
        return output

    def plan(self, step: SchedulerOutput) -> StepPlan:
        states = [self.batch.requests[rid] for rid in step.req_ids]
        query_lens = list(step.num_scheduled_tokens)
        starts = [s.num_computed_tokens for s in states]
        seq_lens = [p + n for p, n in zip(starts, query_lens)]
        num_decodes = 0
        while (num_decodes < len(states) and query_lens[num_decodes] == 1
               and seq_lens[num_decodes] > 1):
            num_decodes += 1
        graph_size = self.graphs.size_for(len(states)) if num_decodes == len(states) else None
        mixed_size = None if graph_size is not None else self.mixed.size_for(sum(query_lens))
        # a row samples when it reaches the end of the known tokens (or runs the token the
        # previous step sampled, which only the device knows yet)
        sample_rows = [i for i, (s, end) in enumerate(zip(states, seq_lens))
                       if end >= len(s.token_ids)]
        return StepPlan(states, query_lens, seq_lens, num_decodes, graph_size, mixed_size,
                        sample_rows, starts)

    def _input_ids(self, plan: StepPlan) -> tuple[list[int], list[int], list[int]]:
        """The step's input ids as far as the host knows them, and where the previous step's
        sampled ids go (input positions, rows of ``_prev_sampled``)."""
        ids: list[int] = []
        prev_dst: list[int] = []
        prev_src: list[int] = []
        for s, p, q in zip(plan.states, plan.starts, plan.query_lens):
            known = s.token_ids[p:p + q]
            ids.extend(known)
            if len(known) < q:
                if q - len(known) > 1 or s.req_id not in self._prev_row:
                    raise WorkerStateError(
                        f"request {s.req_id!r} runs {q - len(known)} token(s) this worker has "
                        f"not seen and the previous step did not sample for it")
                prev_dst.append(len(ids))
                prev_src.append(self._prev_row[s.req_id])
                ids.append(0)
        return ids, prev_dst, prev_src

    def prepare_inputs(self, plan: StepPlan) -> AttentionMetadata:
        """Fill the step's host views (padding rows and tokens for a graph), copy once."""
        n, nt, nr, batch = plan.num_tokens, plan.num_padded_tokens, plan.num_rows, len(plan.states)
        ids, prev_dst, prev_src = self._input_ids(plan)
        views = self.staging.views(nt, nr, len(plan.sample_rows), len(prev_dst))
        starts = plan.starts
        if plan.num_decodes == batch:
            positions = np.asarray(starts, dtype=np.int64)
        else:
            positions = np.concatenate([np.arange(p, p + q) for p, q in zip(starts, plan.query_lens)])
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
        views["sample_index"][:] = qsl[1:batch + 1][plan.sample_rows] - 1
        views["prev_dst"][:] = prev_dst
        views["prev_src"][:] = prev_src
        table_view = self.staging.block_table_view(nr)
        table_view[:batch] = table[rows]
        table_view[batch:] = 0
        self.staging.copy_to_device(nr)
        self._feed_previous_samples(len(prev_dst))
        dev = self.staging.dev
        metadata = PagedAttentionMetadata(
            query_start_loc=dev.query_start_loc[: batch + 1], seq_lens=dev.seq_lens[:batch],
            query_lens_cpu=plan.query_lens, seq_lens_cpu=plan.seq_lens,
            slot_mapping=dev.slot_mapping[:n], block_tables=dev.block_tables[:batch],
            block_size=bs, num_decodes=plan.num_decodes)
        return self.backend.build_metadata(metadata)

    def _feed_previous_samples(self, count: int) -> None:
        """Input positions whose token the previous step sampled get it on the device."""
        if count == 0:
            return
        assert self._prev_sampled is not None  # _input_ids checked every request has a row
        dst, src = self.staging.index("prev_dst"), self.staging.index("prev_src")
        self.staging.dev.input_ids.index_copy_(0, dst, self._prev_sampled.index_select(0, src))

    def run(self, plan: StepPlan, metadata: AttentionMetadata) -> torch.Tensor | None:
        """Logits of the rows to sample (None when only mid-prompt chunks ran, or when the
        model is a pipeline stage before the last: it returns no hidden states)."""
        if plan.graph_size is not None:
            logits = self.graphs.replay(plan.graph_size)
            if len(plan.sample_rows) == len(plan.states):  # every decode row samples
                return logits[:len(plan.states)]
            return logits.index_select(0, self.staging.index("sample_index"))
        n = plan.num_tokens
        dev = self.staging.dev
        if plan.mixed_size is not None:
            hidden = self.mixed.replay(plan.mixed_size, n, metadata)
        else:
            hidden = self.model(dev.input_ids[:n], dev.positions[:n], metadata)
        if hidden is None or not plan.sample_rows:
            return None
        return self.model.compute_logits(hidden.index_select(0, self.staging.index("sample_index")))

    def _no_output(self) -> StepOutput:
        self._prev_sampled, self._prev_row = None, {}
        return ReadyOutput(ModelRunnerOutput())

    def sample(self, plan: StepPlan, logits: torch.Tensor, kind: str) -> StepOutput:
        """Sample on the device, remember the ids for the next step's inputs, start the copy
        to the host."""
        states = [plan.states[i] for i in plan.sample_rows]
        params: list[SamplingParams | WireSamplingParams] = [s.params for s in states]
        history = needs_token_history(params)  # else no per-step copy of every token list
        inputs = SamplingInputs(
            params=params,
            output_token_ids=[s.output_token_ids if history else [] for s in states],
            prompt_token_ids=[s.token_ids[:s.prompt_len] if history else [] for s in states],
            generators=[s.generator for s in states],
            min_tokens_block=[s.params.min_tokens_block
                              if len(s.token_ids) - s.prompt_len < s.params.min_tokens else []
                              for s in states])
        sample = self.sampler.sample_on_device(logits, inputs)
        req_ids = [s.req_id for s in states]
        self._prev_sampled = sample.token_ids
        self._prev_row = {rid: i for i, rid in enumerate(req_ids)}
        return AsyncStepOutput(req_ids, sample, self._copy_stream, self.timings, kind)


def _fill(view: np.ndarray, values, pad: int) -> None:
    """``values`` into the head of ``view``, ``pad`` into the rest (graph padding)."""
    count = len(values)
    view[:count] = values
    view[count:] = pad
