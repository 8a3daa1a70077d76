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
