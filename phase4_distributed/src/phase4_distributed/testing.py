"""Shared by phase 4's tests, the milestone tests, the notebook and the demo. What each rank runs
in the TP/PP forward checks (started as a real process by ``launch_local_ranks``):
build its shard with ``build_parallel_model``, allocate its stage's paged KV cache, run two
varlen steps (prefill, then decodes mixed with a chunked prefill over cached context) through
``pipeline_forward``, and write what the test checks: logits, parameters, communication counts,
KV cache layout. Also the batch itself, the TP=1 reference (one process) and ``run_layouts``,
which launches the ranks and reads their reports back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from phase2_attention import PagedAttentionMetadata, allocate_kv_cache
from phase1_kernels import ModelConfig
from phase1_kernels.lazy_tensor import read_stats
from phase1_kernels.loader import build_model
from phase3_scheduling.config import ParallelConfig
from phase4_distributed.local_launch import free_port, launch_local_ranks
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
MODEL_OPTIONS: dict[str, Any] = dict(dtype=torch.float64, device="cpu", attn_backend="sdpa",
                                     kernel_impl="native")


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
    report: dict[str, Any] = {"bytes_read": read_stats.bytes, "steps": [],
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
    report["kv_cache"] = []
    for layer in model.attention_layers:
        cache = layer.kv_cache
        assert cache is not None  # allocate_kv_cache bound one to every layer
        report["kv_cache"].append([layer.layer_idx, list(cache.shape), bool(cache.abs().sum() > 0)])
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


def reference_logits(model_dir) -> list[torch.Tensor]:
    """TP=1, one process: phase 1's model with phase 2's paged cache, the same two steps."""
    model = build_model(ModelConfig.from_pretrained(model_dir), model_dir, **MODEL_OPTIONS)
    allocate_kv_cache(model, NUM_BLOCKS, BLOCK_SIZE)
    return [model.lm_head(model(ids, pos, meta)) for ids, pos, meta in varlen_steps(model.config.vocab_size)]


def run_layouts(layouts: dict[str, tuple[int, int]], jobs: dict[str, Path], out: Path,
                dump_params: bool = True, timeout_s: float = 200) -> dict[str, dict[str, list[dict]]]:
    """Launch one set of ranks that runs every layout ``{name: (tp, pp)}`` (same world size)
    over every job ``{name: model_dir}``; per layout and job, each rank's report and tensors."""
    specs = []
    for index, (layout, (tp, pp)) in enumerate(layouts.items()):
        for name in jobs:
            (out / layout / name).mkdir(parents=True)
        specs.append({"tp": tp, "pp": pp, "port": free_port() if index else None, "jobs": [
            {"model_dir": str(d), "out_dir": str(out / layout / n), "dump_params": dump_params}
            for n, d in jobs.items()]})
    world = {tp * pp for tp, pp in layouts.values()}.pop()
    launch_local_ranks(f"{__name__}:run_forward_steps", world, {"layouts": specs}, timeout_s=timeout_s)
    return {layout: {name: [_rank_result(out / layout / name, r, tp) for r in range(world)]
                     for name in jobs} for layout, (tp, _) in layouts.items()}


def _rank_result(folder: Path, rank: int, tp: int) -> dict:
    return {"rank": rank, "tp_rank": rank % tp, "pp_rank": rank // tp,
            **json.loads((folder / f"rank{rank}.json").read_text()),
            "tensors": load_file(folder / f"rank{rank}.safetensors")}
