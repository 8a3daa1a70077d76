"""The model runner: turns a scheduled step into one flattened varlen batch and runs it.

It owns the model, the paged KV cache (sized by profiling on GPU), persistent input buffers
(no per-step allocation of device tensors) and, on CUDA, graphs of the decode step captured at
padded batch sizes and sharing one memory pool (launching ~500 kernels of a decode step from
Python costs more than the GPU work at small batch; a graph replay costs one launch).
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

import torch
from tqdm.auto import tqdm

from phase1_kernels import LightvLLM, ModelConfig
from phase2_attention import PagedAttentionMetadata, allocate_kv_cache, best_paged_backend
from phase2_attention.kv_cache import determine_num_blocks
from phase2_attention.kv_cache_manager import cdiv

from .config import EngineArgs
from .sampler import Sampler, SamplingInputs
from .scheduler import SchedulerOutput


@dataclass
class ModelRunnerOutput:
    sampled: dict[str, int]
    logprobs: dict[str, tuple] | None = None  # id -> (chosen logprob, rank, top list)


class ModelRunner:
    def __init__(self, args: EngineArgs):
        start = time.perf_counter()
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.device = device
        backend = args.attention_backend or best_paged_backend(device, args.block_size)
        config = ModelConfig.from_dict(args.hf_config) if args.hf_config else None
        name = None if (args.load_format == "dummy" and config is not None) else args.model
        self.llm = LightvLLM.from_pretrained(name, dtype=args.dtype, device=device,
                                             load_format=args.load_format, attn_backend=backend,
                                             kernel_impl=args.kernel_impl, config=config,
                                             seed=args.seed)
        self.model = self.llm.model
        self.model_config = self.model.config
        self.scheduler_config = args.scheduler_config(self.model_config.max_position_embeddings)
        self.block_size = args.block_size
        self.num_blocks = determine_num_blocks(self.model, args.cache_config(),
                                               self.scheduler_config.max_num_batched_tokens)
        allocate_kv_cache(self.model, self.num_blocks, self.block_size)
        self.max_blocks_per_seq = cdiv(self.scheduler_config.max_model_len, self.block_size)
        tokens, seqs = self.scheduler_config.max_num_batched_tokens, self.scheduler_config.max_num_seqs
        tokens = max(tokens, seqs)
        self.input_ids = torch.zeros(tokens, dtype=torch.long, device=device)
        self.positions = torch.zeros(tokens, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((tokens,), -1, dtype=torch.long, device=device)
        self.block_tables = torch.zeros(seqs, self.max_blocks_per_seq, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(seqs, dtype=torch.int32, device=device)
        self.query_start_loc = torch.zeros(seqs + 1, dtype=torch.int32, device=device)
        self.cpu_block_table = np.zeros((seqs, self.max_blocks_per_seq), dtype=np.int32)
        self.rows: dict[str, int] = {}
        self.free_rows = list(range(seqs))
        self.timings: dict[str, float] = defaultdict(float)
        # pinned host staging buffers (reused every step) and their device twin
        pin = device.type == "cuda"
        self.stage_cpu = torch.zeros(4 * tokens + 2 * seqs + 1, dtype=torch.int64, pin_memory=pin)
        self.stage_np = self.stage_cpu.numpy()
        self.stage_dev = torch.zeros_like(self.stage_cpu, device=device)
        self.table_cpu = torch.zeros(seqs, self.max_blocks_per_seq, dtype=torch.int32, pin_memory=pin)
        self.table_np = self.table_cpu.numpy()
        self._staged = None
        self.sampler = Sampler()
        self.generators: dict[str, torch.Generator] = {}
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.backend_name = backend
        if device.type == "cuda":
            self.warm_up()
            if not args.enforce_eager:
                self.capture_decode_graphs()
        self.startup_seconds = time.perf_counter() - start

    # ---- description for the engine ------------------------------------------------------------
    def describe(self) -> dict:
        return dict(num_blocks=self.num_blocks, block_size=self.block_size,
                    scheduler_config=self.scheduler_config, model_config=self.model_config,
                    model_dir=None if self.llm.model_dir is None else str(self.llm.model_dir),
                    device=str(self.device), dtype=str(self.llm.dtype), backend=self.backend_name,
                    graph_sizes=sorted(self.graphs), startup_seconds=getattr(self, "startup_seconds", None))

    # ---- one step ------------------------------------------------------------------------------
    @torch.inference_mode()
    def execute_model(self, out: SchedulerOutput) -> ModelRunnerOutput:
        t0 = time.perf_counter()
        for rid in out.finished_ids:
            self.generators.pop(rid, None)
        for rid in out.finished_ids + out.preempted_ids:
            row = self.rows.pop(rid, None)
            if row is not None:
                self.free_rows.append(row)
        if out.is_empty:
            return ModelRunnerOutput({})
        reqs = out.scheduled
        bs = self.block_size
        row_ids = []
        for r in reqs:  # persistent block table: write only the blocks this worker has not seen
            row = self.rows.get(r.request_id)
            if row is None:
                row = self.rows[r.request_id] = self.free_rows.pop()
            if r.new_block_ids:
                self.cpu_block_table[row, r.block_offset : r.block_offset + len(r.new_block_ids)] = r.new_block_ids
            row_ids.append(row)
        q_lens = [r.num_tokens for r in reqs]
        seq_lens = [r.start_position + r.num_tokens for r in reqs]
        num_decodes = 0
        while num_decodes < len(reqs) and q_lens[num_decodes] == 1 and seq_lens[num_decodes] > 1:
            num_decodes += 1
        batch = len(reqs)
        num_tokens = sum(q_lens)
        graph_size = self._graph_size(batch) if num_decodes == batch else None
        rows = graph_size or batch
        padded_tokens = graph_size or num_tokens
        ids = [t for r in reqs for t in r.token_ids]
        positions = np.concatenate([np.arange(r.start_position, r.start_position + r.num_tokens)
                                    for r in reqs]) if num_decodes < batch else np.array(seq_lens) - 1
        token_rows = np.asarray(row_ids)[np.repeat(np.arange(batch), q_lens)]
        slots = self.cpu_block_table[token_rows, positions // bs].astype(np.int64) * bs + positions % bs
        starts = np.zeros(rows + 1, dtype=np.int64)
        starts[1:] = np.cumsum(q_lens + [1] * (rows - batch))
        nt, nr = padded_tokens, rows
        if self._staged is not None:
            self._staged.synchronize()  # the previous step's copies out of the pinned buffers
        stage, table_stage = self.stage_np, self.table_np
        stage[:num_tokens] = ids
        stage[num_tokens:nt] = 0
        stage[nt:nt + num_tokens] = positions
        stage[nt + num_tokens:2 * nt] = 0
        stage[2 * nt:2 * nt + num_tokens] = slots
        stage[2 * nt + num_tokens:3 * nt] = -1
        stage[3 * nt:3 * nt + batch] = seq_lens
        stage[3 * nt + batch:3 * nt + nr] = 1
        end = 3 * nt + 2 * nr + 1
        stage[3 * nt + nr:end] = starts
        table_stage[:batch] = self.cpu_block_table[row_ids]
        table_stage[batch:rows] = 0
        # one host->device copy of the scalars and one of the block table, then device scatter
        dev = self.stage_dev[:end]
        dev.copy_(self.stage_cpu[:end], non_blocking=True)
        self.block_tables[:rows].copy_(self.table_cpu[:rows], non_blocking=True)
        if self.device.type == "cuda":
            self._staged = torch.cuda.Event()
            self._staged.record()
        self.input_ids[:nt].copy_(dev[:nt])
        self.positions[:nt].copy_(dev[nt:2 * nt])
        self.slot_mapping[:nt].copy_(dev[2 * nt:3 * nt])
        self.seq_lens[:nr].copy_(dev[3 * nt:3 * nt + nr])
        self.query_start_loc[: nr + 1].copy_(dev[3 * nt + nr:end])
        starts = starts.tolist()
        t1 = time.perf_counter()

        sample_rows = [i for i, r in enumerate(reqs) if r.sample]
        if graph_size is not None:
            graph, logits = self.graphs[graph_size]
            graph.replay()
            logits = logits[sample_rows]
        else:
            metadata = PagedAttentionMetadata(
                query_start_loc=self.query_start_loc[: batch + 1], seq_lens=self.seq_lens[:batch],
                query_lens_cpu=q_lens, seq_lens_cpu=seq_lens, slot_mapping=self.slot_mapping[:num_tokens],
                block_tables=self.block_tables[:batch], block_size=bs, num_decodes=num_decodes)
            hidden = self.model(self.input_ids[:num_tokens], self.positions[:num_tokens], metadata)
            if not sample_rows:  # only mid-prompt chunks ran: nothing to sample
                return ModelRunnerOutput({})
            last = torch.tensor([starts[i + 1] - 1 for i in sample_rows], dtype=torch.long,
                                device=self.device)
            logits = self.model.compute_logits(hidden[last])
        sampling = [reqs[i] for i in sample_rows]
        inputs = SamplingInputs(
            params=[r.params for r in sampling],
            output_token_ids=[r.output_token_ids for r in sampling],
            prompt_token_ids=[r.prompt_token_ids for r in sampling],
            generators=[self._generator(r) for r in sampling],
            min_tokens_block=[
                (r.eos_token_ids + r.params.stop_token_ids)
                if len(r.output_token_ids) < r.params.min_tokens else [] for r in sampling],
        )
        result = self.sampler(logits, inputs)
        kind = "decode" if graph_size is not None else "eager"
        self.timings[kind + "_prepare"] += t1 - t0
        self.timings[kind + "_run"] += time.perf_counter() - t1
        self.timings[kind + "_steps"] += 1
        sampled = {r.request_id: t for r, t in zip(sampling, result.token_ids)}
        logprobs = None
        if result.logprobs is not None:
            logprobs = {r.request_id: (lp, rank, top) for r, lp, rank, top in
                        zip(sampling, result.logprobs, result.ranks, result.top_logprobs)}
        return ModelRunnerOutput(sampled, logprobs)

    def get_timings(self) -> dict[str, float]:
        """Seconds spent preparing inputs and running (forward + sampling) per step kind."""
        return dict(self.timings)

    def _generator(self, r) -> torch.Generator | None:
        if r.params.seed is None or r.params.greedy:
            return None
        gen = self.generators.get(r.request_id)
        if gen is None:
            gen = torch.Generator(device=self.device).manual_seed(r.params.seed)
            self.generators[r.request_id] = gen
        return gen

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Run prefill, chunked-prefill and mixed batches once so that Triton compiles its
        kernel variants (specialised on argument values such as 1 and multiples of 16) now,
        not inside the first users' requests. Nothing is stored: every slot is -1 and the
        block tables point at the null block."""
        bs = self.block_size
        limit = min(self.scheduler_config.max_num_batched_tokens, self.scheduler_config.max_model_len - 1)
        shapes = [([17], [17]), ([min(512, limit)], [min(512, limit)]),
                  ([1, 1, 16], [40, 3, 48]), ([1, 23], [77, 55])]
        for q_lens, seq_lens in shapes:
            tokens, batch = sum(q_lens), len(q_lens)
            starts = torch.tensor([0] + list(itertools.accumulate(q_lens)), dtype=torch.int32)
            num_decodes = sum(1 for q, s in zip(q_lens, seq_lens) if q == 1 and s > 1)
            metadata = PagedAttentionMetadata(
                query_start_loc=starts.to(self.device), seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=self.device),
                query_lens_cpu=q_lens, seq_lens_cpu=seq_lens,
                slot_mapping=torch.full((tokens,), -1, dtype=torch.long, device=self.device),
                block_tables=torch.zeros(batch, self.max_blocks_per_seq, dtype=torch.int32, device=self.device),
                block_size=bs, num_decodes=num_decodes)
            positions = torch.cat([torch.arange(s - q, s) for q, s in zip(q_lens, seq_lens)]).to(self.device)
            hidden = self.model(torch.zeros(tokens, dtype=torch.long, device=self.device), positions, metadata)
            self.model.compute_logits(hidden[starts[1:].long().to(self.device) - 1])
        torch.cuda.synchronize()

    # ---- CUDA graphs -------------------------------------------------------------------------
    def _graph_size(self, batch: int) -> int | None:
        for size in sorted(self.graphs):
            if size >= batch:
                return size
        return None

    def capture_decode_graphs(self) -> None:
        """Capture one decode step per padded batch size, largest first, into a shared pool."""
        limit = min(self.scheduler_config.max_num_seqs, 512)
        sizes = [s for s in [1, 2, 4, 8] + list(range(16, limit + 1, 16)) if s <= limit]
        pool = None
        self.slot_mapping.fill_(-1)
        self.seq_lens.fill_(1)
        self.block_tables.zero_()
        for size in tqdm(sorted(sizes, reverse=True), desc="capturing CUDA graphs", unit="graph"):
            metadata = PagedAttentionMetadata(
                query_start_loc=self.query_start_loc[: size + 1], seq_lens=self.seq_lens[:size],
                query_lens_cpu=[1] * size, seq_lens_cpu=[2] * size,
                slot_mapping=self.slot_mapping[:size], block_tables=self.block_tables[:size],
                block_size=self.block_size, num_decodes=size)
            self.query_start_loc[: size + 1].copy_(torch.arange(size + 1, dtype=torch.int32))
            args = (self.input_ids[:size], self.positions[:size], metadata)
            with torch.inference_mode():
                self.model.compute_logits(self.model(*args))  # warm-up (Triton autotune, cuBLAS)
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    logits = self.model.compute_logits(self.model(*args))
            pool = graph.pool()
            self.graphs[size] = (graph, logits)
        torch.cuda.synchronize()
