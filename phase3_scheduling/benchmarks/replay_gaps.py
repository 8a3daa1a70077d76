"""Idle gaps on the GPU between consecutive decode steps, with and without async scheduling.

Builds the B2 engine (Llama-3.1-8B shape, dummy bf16 weights, CUDA graphs) once per mode —
``--no-async-scheduling`` (the engine waits for step N's tokens before it schedules step N+1)
and async scheduling (step N+1 is launched before step N's tokens are read) — starts
``--batch`` decoding requests, and records ``--steps`` decode steps with ``torch.profiler``
(CPU + CUDA activity). From the trace's GPU kernels (graph replays show their kernels one by
one) it computes, per step: the wall time, the GPU's busy time (union of kernel intervals), the
idle time, and the gap between consecutive steps' kernels (the largest gap inside each step's
window: the host work the device waited for). A table per mode, and the Chrome traces with
``--trace-dir`` to look at in Perfetto.

    python phase3_scheduling/benchmarks/replay_gaps.py --out gaps.json --trace-dir traces/
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
for _p in ("shared", "phase1_kernels", "phase2_attention", "phase3_scheduling"):
    if str(ROOT / _p / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / _p / "src"))

from phase3_scheduling import LLM, SamplingParams  # noqa: E402
from phase3_scheduling.cli_args import hf_config  # noqa: E402
from phase3_scheduling.config import EngineArgs  # noqa: E402
from shared.bench import hardware, markdown_table  # noqa: E402


def merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, overlapping intervals joined: the device's busy periods."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def gap_stats(kernels: list[tuple[float, float]], steps: int) -> dict[str, float]:
    """µs per step of a window of ``steps`` steps: wall (first kernel start to last kernel end),
    busy, idle, and the median of the ``steps - 1`` largest gaps (one per step boundary)."""
    busy = merge(kernels)
    if len(busy) < 2 or steps < 2:
        raise ValueError("need kernels of at least two steps")
    gaps = sorted((b[0] - a[1] for a, b in zip(busy, busy[1:])), reverse=True)
    wall = busy[-1][1] - busy[0][0]
    busy_us = sum(end - start for start, end in busy)
    return {"wall_us_per_step": wall / steps, "busy_us_per_step": busy_us / steps,
            "idle_us_per_step": (wall - busy_us) / steps,
            "step_gap_us_median": statistics.median(gaps[:steps - 1]),
            "step_gap_us_max": gaps[0]}


def kv_blocks(batch: int, tokens_per_request: int, block_size: int = 16) -> int:
    """KV blocks for ``batch`` requests of ``tokens_per_request`` tokens each, at least 2048."""
    return max(2048, batch * -(-tokens_per_request // block_size) + 64)


def build(async_scheduling: bool, batch: int, tokens_per_request: int) -> LLM:
    return LLM.from_engine_args(EngineArgs(
        load_format="dummy", hf_config=hf_config("llama-3.1-8b"), dtype="bfloat16", max_num_seqs=max(8, batch),
        num_gpu_blocks_override=kv_blocks(batch, tokens_per_request),
        async_scheduling=async_scheduling))


def start_decodes(llm: LLM, batch: int, prompt_len: int, max_tokens: int) -> None:
    vocab = llm.engine.model_config.vocab_size
    rng = random.Random(0)
    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=max_tokens)
    for _ in range(batch):
        llm.engine.add_request(None, [rng.randrange(10, vocab - 10) for _ in range(prompt_len)],
                               params)
    started: set[str] = set()  # until every request has its first token: decode steps only after
    while len(started) < batch:
        started.update(o.request_id for o in llm.engine.step() if o.outputs and o.outputs[0].token_ids)


def profile_steps(llm: LLM, steps: int, trace: Path | None) -> list[tuple[float, float]]:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(8):  # warm: graphs replayed, queues in their steady state
        llm.engine.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            llm.engine.step()
        torch.cuda.synchronize()
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    return [(e.time_range.start, e.time_range.end) for e in prof.events()
            if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start]


def measure(mode: str, args) -> dict:
    max_tokens = args.steps + 64
    llm = build(mode == "async", args.batch, args.prompt_len + max_tokens)
    start_decodes(llm, args.batch, args.prompt_len, max_tokens)
    trace = Path(args.trace_dir) / f"replay_gaps_{mode}.json" if args.trace_dir else None
    stats = gap_stats(profile_steps(llm, args.steps, trace), args.steps)
    llm.engine.shutdown()
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    return {"mode": mode, "batch": args.batch, "steps": args.steps, **stats}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--trace-dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("replay_gaps.py profiles CUDA kernels: it needs a GPU")
    if args.trace_dir:
        Path(args.trace_dir).mkdir(parents=True, exist_ok=True)
    rows = [measure(mode, args) for mode in ("sync", "async")]
    columns = ["mode", "batch", "steps", "wall_us_per_step", "busy_us_per_step",
               "idle_us_per_step", "step_gap_us_median", "step_gap_us_max"]
    print(f"\n{hardware()}")
    print(markdown_table(columns, [[round(r[c], 1) if isinstance(r[c], float) else r[c]
                                    for c in columns] for r in rows]))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
