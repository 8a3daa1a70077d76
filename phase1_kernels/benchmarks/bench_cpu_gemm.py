"""The CPU GEMMs of one B5 decode step, per implementation: SmolLM2-135M's 30 layers of linears
(qkv 576->960, o 576->576, gate|up 576->3072, down 1536->576, each layer its own weights, so
every weight comes cold from memory as in the engine) and the lm_head (576->49152), at a few row
counts, with our packed AVX2 kernel (``packed``), oneDNN's prepacked weights (``onednn``) and
MKL's ``F.linear`` (``native``), interleaved; the median of ``--reps`` rounds, next to a bare
``torch.mm`` of 1024^3 measured in the same run (the machine's GEMM peak).

    python phase1_kernels/benchmarks/bench_cpu_gemm.py [--rows 16 64 256 1024] [--reps 5]
        [--threads N] [--out gemm.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from phase1_kernels.cpu_threads import configure_cpu_threads
from phase1_kernels.layers import cpu_linear

LAYERS = 30
SHAPES = {"qkv": (576, 960), "o": (576, 576), "gate_up": (576, 3072), "down": (1536, 576)}
LM_HEAD = (576, 49152)


def pack(mode: str, weight: torch.Tensor) -> torch.Tensor:
    return weight if mode == "native" else cpu_linear._PACKERS[mode](weight)


def run(mode: str, x: torch.Tensor, packed: torch.Tensor, out: torch.Tensor) -> None:
    if mode == "native":
        F.linear(x, packed)
    elif mode == "onednn":
        cpu_linear._run_onednn(x, packed, None)
    else:
        torch.ops.lightvllm.packed_linear(out, x, packed)


def mm_peak() -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(10):
        torch.mm(a, b)
    return 2 * 1024**3 * 10 / (time.perf_counter() - start) / 1e9


def workloads(modes: list[str], rows: int) -> dict[str, tuple[Callable[[], None], float]]:
    """name -> (one call of the 30 layers or of the lm_head, its FLOPs)."""
    torch.manual_seed(0)
    dense = [{n: torch.randn(out, k) for n, (k, out) in SHAPES.items()} for _ in range(LAYERS)]
    head = torch.randn(LM_HEAD[1], LM_HEAD[0])
    xs = {k: torch.randn(rows, k) for k in (576, 1536)}
    outs = {n: torch.empty(rows, out) for n, (_, out) in SHAPES.items()}
    head_out = torch.empty(rows, LM_HEAD[1])
    layer_flops = 2 * rows * LAYERS * sum(k * out for k, out in SHAPES.values())
    found: dict[str, tuple[Callable[[], None], float]] = {}
    for mode in modes:
        packs = [{n: pack(mode, w) for n, w in layer.items()} for layer in dense]
        head_pack = pack(mode, head)

        def layers(mode=mode, packs=packs) -> None:
            for layer in packs:
                for n, (k, _) in SHAPES.items():
                    run(mode, xs[k], layer[n], outs[n])

        def lm_head(mode=mode, head_pack=head_pack) -> None:
            run(mode, xs[576], head_pack, head_out)

        found[f"{mode} layers"] = (layers, layer_flops)
        found[f"{mode} lm_head"] = (lm_head, 2 * rows * LM_HEAD[0] * LM_HEAD[1])
    return found


def measure(fns: dict[str, tuple[Callable[[], None], float]], reps: int) -> dict[str, dict]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn, _ in fns.values():
        fn()  # warm-up
    for _ in range(reps):  # interleaved: a slow moment of the shared machine hits every mode
        for name, (fn, _) in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"ms": statistics.median(t) * 1e3, "gflops": fns[name][1] / statistics.median(t) / 1e9}
            for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--modes", nargs="+", default=["packed", "onednn", "native"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    threads = configure_cpu_threads(args.threads)
    modes = [m for m in args.modes if m == "native" or cpu_linear.resolve_mode(m) == m]
    peak = mm_peak()
    print(f"threads {threads.num_threads}, load average {os.getloadavg()[0]:.2f}, "
          f"torch.mm 1024^3: {peak:.1f} GFLOP/s")
    results = [{"rows": rows, **measure(workloads(modes, rows), args.reps)}
               for rows in tqdm(args.rows, desc="row counts", leave=False)]
    print(f"| rows | GEMMs | {' | '.join(modes)} | {modes[0]} vs {modes[1]} |")
    print("|---|---|" + "---|" * (len(modes) + 1))
    for got in results:
        for part in ("layers", "lm_head"):
            cells = [f"{got[f'{m} {part}']['ms']:.1f} ms, {got[f'{m} {part}']['gflops']:.0f} GFLOP/s"
                     for m in modes]
            ratio = got[f"{modes[1]} {part}"]["ms"] / got[f"{modes[0]} {part}"]["ms"]
            print(f"| {got['rows']} | {part} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threads": threads.num_threads, "mm_peak_gflops": peak, "results": results}, f,
                      indent=1)


if __name__ == "__main__":
    main()
