"""Benchmark helpers shared by every phase: a hardware line and markdown tables."""

from __future__ import annotations

import platform
from typing import Sequence


def hardware() -> str:
    """One line naming the machine the figures come from."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}"
    import os

    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}, torch {torch.__version__}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render rows as a GitHub markdown table; floats get 3 significant decimals."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.1f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def median_seconds(fn, device, iters: int = 20) -> float:
    """Median wall time of ``fn()`` over ``iters`` calls after one warm-up, synchronising the
    GPU around each call so asynchronous launches are not mistaken for finished work."""
    import statistics
    import time

    import torch

    cuda = torch.device(device).type == "cuda"
    fn()
    samples = []
    for _ in range(iters):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def copy_bandwidth_gbs(device, nbytes: int = 1 << 30, iters: int = 20) -> float:
    """The device's memory bandwidth as a plain copy achieves it, in GB/s counting the bytes read
    plus the bytes written (2 x ``nbytes`` a copy). Measured in the same run as the figures it
    scales (DESIGN.md section 4), not taken from a constant: the H100 gave ~3.0 TB/s and the H200
    ~4.3 TB/s. On CUDA: CUDA events around ``iters`` back-to-back copies of random bytes, the
    median of 5 such batches after a warm-up; on the CPU: ``median_seconds`` of one copy."""
    import statistics

    import torch

    dev = torch.device(device)
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    if dev.type != "cuda":
        return 2 * nbytes / median_seconds(lambda: dst.copy_(src), dev, iters) / 1e9
    for _ in range(3):
        dst.copy_(src)
    per_copy = [cuda_seconds_per_call(lambda: dst.copy_(src), iters) for _ in range(5)]
    return 2 * nbytes / statistics.median(per_copy) / 1e9


def cuda_seconds_per_call(fn, iters: int) -> float:
    """Mean device seconds of ``fn()`` over ``iters`` back-to-back calls (CUDA events around
    the batch, so launch gaps count and nothing is synchronised between calls)."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def cuda_graph_seconds_per_call(fn, replays: int) -> float:
    """Mean device seconds of one replay of a CUDA graph that captured ``fn()`` once (after one
    eager warm-up call). Inside a graph a kernel costs its device time only, no launch gap: how a
    decode step runs, and the fair timing of kernels whose device time is shorter than an eager
    Python launch (an eager ``F.linear`` costs ~20 µs of CPU, a 4096x4096 bf16 GEMV ~15 µs of GPU)."""
    import torch

    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    seconds = cuda_seconds_per_call(graph.replay, replays)
    del graph
    return seconds


def write_hf_model_dir(shape: dict, directory: str, dtype: str = "bfloat16") -> str:
    """A HuggingFace-style model directory holding only ``config.json`` for a Llama of ``shape``
    (e.g. phase 1's ``LLAMA_3_1_8B``), so that another engine (vLLM with ``load_format="dummy"``
    and ``skip_tokenizer_init``) can build the same model with random weights as ours does."""
    import json
    import os

    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "torch_dtype": dtype, "attention_bias": False, "mlp_bias": False,
              "initializer_range": 0.02, "use_cache": True, **shape}
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as handle:
        json.dump(config, handle, indent=2)
    return directory
