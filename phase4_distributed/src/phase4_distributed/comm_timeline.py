"""A per-rank timeline of one forward: when each rank computes and when it communicates.

``trace_group`` wraps one ``GroupCoordinator``'s collectives (all-reduce, all-gather, the
pipeline's tensor-dict send/recv, which include waiting for the peer) so every call records its
start and end; ``timeline_rank_main`` is a rank program for ``launch_local_ranks`` that runs a
warm-up step and a traced prefill per layout and writes the segments as JSON. Times are
``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every process of the host), relative to a
world barrier, so the ranks' segments line up on one axis.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from phase3_scheduling.config import ParallelConfig

from .group_coordinator import GroupCoordinator
from .model_loader import build_parallel_model
from .parallel_state import (destroy_distributed, get_pp_group, get_tp_group, get_world_group,
                             init_distributed)
from .pipeline import pipeline_forward

logger = logging.getLogger(__name__)

TRACED_OPS = ("all_reduce", "all_gather", "send_tensor_dict", "recv_tensor_dict")


@contextmanager
def trace_group(group: GroupCoordinator, events: list[dict]):
    """Record ``{"op", "group", "start", "end"}`` for every traced call on ``group`` (a group of
    one rank communicates nothing and is left alone)."""
    if group.world_size == 1:
        yield events
        return
    originals = {op: getattr(group, op) for op in TRACED_OPS}

    def timed(op, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            start = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                events.append({"op": op, "group": group.name, "start": start, "end": time.monotonic()})
        return wrapper

    for op, fn in originals.items():
        setattr(group, op, timed(op, fn))
    try:
        yield events
    finally:
        for op in TRACED_OPS:
            delattr(group, op)  # the class's method shows through again


def _prefill_batch(vocab_size: int, num_tokens: int):
    from phase1_kernels.layers.attention import AttentionMetadata

    ids = torch.randint(vocab_size, (num_tokens,), generator=torch.Generator().manual_seed(0))
    return ids, torch.arange(num_tokens), AttentionMetadata.build([num_tokens])


def _traced_forward(model, batch) -> dict:
    world = get_world_group()
    events: list[dict] = []
    world.barrier()
    origin = time.monotonic()
    with trace_group(get_tp_group(), events), trace_group(get_pp_group(), events):
        hidden = pipeline_forward(model, *batch)
        if hidden is not None:
            model.compute_logits(hidden[-1:])
    end = time.monotonic()
    return {"forward": [0.0, end - origin],
            "comm": [{**e, "start": e["start"] - origin, "end": e["end"] - origin} for e in events]}


def timeline_rank_main(rank: int, world_size: int, master_addr: str, master_port: int,
                       model_dir: str, layouts: list[list[int]], ports: list[int],
                       num_tokens: int, out_dir: str) -> None:
    """For each ``(tp, pp)`` layout: build this rank's shard, one warm-up and one traced
    prefill of ``num_tokens``; write ``{layout}_rank{r}.json``."""
    torch.set_num_threads(1)
    for (tp, pp), port in zip(layouts, ports):
        init_distributed(world_size, rank, master_addr, port or master_port, "gloo", tp, pp)
        try:
            model = build_parallel_model(model_dir, ParallelConfig(tp, pp), rank, dtype="float32",
                                         device="cpu", attn_backend="sdpa", kernel_impl="native")
            batch = _prefill_batch(model.config.vocab_size, num_tokens)
            _traced_forward(model, batch)  # warm-up
            report = {"rank": rank, "tp": tp, "pp": pp, **_traced_forward(model, batch)}
            Path(out_dir, f"tp{tp}pp{pp}_rank{rank}.json").write_text(json.dumps(report))
        finally:
            destroy_distributed()
