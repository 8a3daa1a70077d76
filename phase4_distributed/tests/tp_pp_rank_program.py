"""What each rank runs in the TP/PP tests (started as a real process by ``launch_local_ranks``):
build its shard with ``build_parallel_model``, allocate its stage's paged KV cache, run two
varlen steps (prefill, then decodes mixed with a chunked prefill over cached context) through
``pipeline_forward``, and write what the test checks: logits, parameters, communication counts,
KV cache layout. Also the batch itself, shared with the TP=1 reference in the test."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from phase2_attention import PagedAttentionMetadata, allocate_kv_cache
from phase3_scheduling.config import ParallelConfig
from phase1_kernels.lazy_tensor import read_stats
from phase4_distributed.model_loader import build_parallel_model
from phase4_distributed.parallel_state import (
    destroy_distributed,
    get_pp_group,
    get_tp_group,
    init_distributed,
)
from phase4_distributed.pipeline import pipeline_forward

BLOCK_SIZE, NUM_BLOCKS = 4, 24
BLOCK_TABLES = [[1, 2], [3], [4, 5, 6]]
STEPS = [([5, 3, 7], [5, 3, 7]),  # prefill of three prompts
         ([1, 1, 3], [6, 4, 10])]  # two decodes, then 3 more prompt tokens over 7 cached
MODEL_OPTIONS = dict(dtype=torch.float64, device="cpu", attn_backend="sdpa", kernel_impl="native")


def varlen_steps(vocab_size: int, seed: int = 0):
    """``(input_ids, positions, metadata)`` of each step, the same in every process."""
    generator = torch.Generator().manual_seed(seed)
    for query_lens, seq_lens in STEPS:
        ids = torch.randint(vocab_size, (sum(query_lens),), generator=generator)
        positions = torch.cat([torch.arange(s - q, s) for q, s in zip(query_lens, seq_lens)])
        yield ids, positions, PagedAttentionMetadata.build_paged(query_lens, seq_lens,
                                                                 BLOCK_TABLES, BLOCK_SIZE)


def _run_job(rank: int, parallel: ParallelConfig, model_dir: str, out: Path,
             dump_params: bool) -> None:
    read_stats.reset()
    model = build_parallel_model(model_dir, parallel, rank, **MODEL_OPTIONS)
    report = {"bytes_read": read_stats.bytes, "steps": [],
              "num_params": sum(p.numel() for p in model.parameters())}
    allocate_kv_cache(model, NUM_BLOCKS, BLOCK_SIZE)
    tp, pp = get_tp_group(), get_pp_group()
    tensors = {}
    for step, (ids, positions, metadata) in enumerate(varlen_steps(model.config.vocab_size)):
        tp.stats.reset()
        pp.stats.reset()
        hidden = pipeline_forward(model, ids, positions, metadata)
        stats = {"tp_forward": tp.stats.as_dict(), "pp": pp.stats.as_dict(), "num_tokens": len(ids)}
        if hidden is not None:
            tp.stats.reset()
            tensors[f"logits{step}"] = model.lm_head(hidden).contiguous()  # fp64; compute_logits: fp32
            stats["tp_logits"] = tp.stats.as_dict()
        report["steps"].append(stats)
    report["kv_cache"] = [[layer.layer_idx, list(layer.kv_cache.shape),
                           bool(layer.kv_cache.abs().sum() > 0)] for layer in model.attention_layers]
    if dump_params:
        tensors.update({name: p.detach().clone() for name, p in model.named_parameters()})
    save_file(tensors, out / f"rank{rank}.safetensors")
    (out / f"rank{rank}.json").write_text(json.dumps(report))


def run_forward_steps(rank: int, world_size: int, master_addr: str, master_port: int,
                      layouts: list[dict]) -> None:
    """Each layout ``{tp, pp, port, jobs}`` (``tp x pp == world_size``) in turn: join a fresh
    process group (the first at ``master_port``), run every job ``{model_dir, out_dir,
    dump_params}`` in it, leave. One set of processes serves several layouts."""
    torch.set_num_threads(1)
    for layout in layouts:
        tp, pp = layout["tp"], layout["pp"]
        init_distributed(world_size, rank, master_addr, layout.get("port") or master_port,
                         "gloo", tp, pp, timeout_s=90)
        try:
            for job in layout["jobs"]:
                _run_job(rank, ParallelConfig(tp, pp), job["model_dir"], Path(job["out_dir"]),
                         job.get("dump_params", True))
        finally:
            destroy_distributed()
