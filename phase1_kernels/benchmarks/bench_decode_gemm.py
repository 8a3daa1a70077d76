"""The decode step's GEMMs at 1-16 rows: cuBLAS against our CUDA and Triton weight-streaming kernels.

For each weight shape of the Llama-3.1-8B decode step (qkv, o_proj, gate_up, down, lm_head), bf16,
a stack of distinct weights of that shape (together larger than the L2 cache, so every call reads
its weight from memory as in a real step) is multiplied in turn by an x of M rows inside one CUDA
graph, as the engine replays them; µs per call is the replay time over the number of weights.
GB/s counts the weight bytes (x and the output are negligible), next to the device's copy
bandwidth measured in the same run: the weights' floor. Kernels: ``cublas`` (``F.linear``),
``gemv1/2/4`` (``small_batch_linear`` with 1, 2, 4 output columns per warp; up to 8 rows),
``mma4/8``, ``mma4x2/8x2`` (``mma_linear``, the tensor-core weight stream with 4 or 8 warps
splitting K in a block of one or two tiles of 16 columns; up to 16 rows) and ``skinnyNxK`` (the Triton skinny GEMM, ``tl.dot`` on rows padded to 16, one config each; up to
16 rows: ``LIGHTVLLM_GPU_LINEAR=auto`` lets the engine choose it).

    python phase1_kernels/benchmarks/bench_decode_gemm.py --out decode_gemm.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
for p in (ROOT / "shared" / "src", ROOT / "phase1_kernels" / "src"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from phase1_kernels.layers import gpu_linear  # noqa: E402
from phase1_kernels.layers.gpu_linear import GEMV_COLS, GEMV_MAX_ROWS  # noqa: E402
from phase1_kernels.ops import compiled, skinny_gemm  # noqa: E402
from shared.bench import (copy_bandwidth_gbs, cuda_graph_seconds_per_call, hardware,  # noqa: E402
                          markdown_table)

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
          "down": (4096, 14336), "lm_head": (128256, 4096)}
L2_MARGIN_BYTES = 4 * 50 * 2**20  # the stack of weights is at least 4x an H100/H200 L2


def kernels(rows: int, skinny: bool = True) -> dict:
    """The kernels that take ``rows`` rows, by label (``skinny``: the Triton one too)."""
    runs = {"cublas": lambda x, w: F.linear(x, w)}
    if rows <= GEMV_MAX_ROWS:
        for cols in GEMV_COLS:
            runs[f"gemv{cols}"] = lambda x, w, cols=cols: compiled.small_batch_linear(x, w, cols)
    for kernel in gpu_linear.candidates("mma"):  # the engine's own candidates and labels
        if rows <= kernel.max_rows:
            runs[kernel.label] = kernel.run
    if skinny and rows <= skinny_gemm.MAX_ROWS and not skinny_gemm.why_unavailable("cuda"):
        for c in skinny_gemm.CONFIGS:
            runs[f"skinny{c.block_n}x{c.block_k}"] = (
                lambda x, w, c=c: skinny_gemm.skinny_linear(x, w, c))
    return runs


def graph_us_per_call(run, x: torch.Tensor, weights: list[torch.Tensor], replays: int) -> float:
    """µs per GEMM of a CUDA graph that multiplies ``x`` by every weight in turn."""
    for w in weights[:2]:
        run(x, w)

    def every_layer() -> None:
        for w in weights:
            run(x, w)

    return 1e6 * cuda_graph_seconds_per_call(every_layer, replays) / len(weights)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--rows", default="1,2,4,8,16")
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--no-skinny", action="store_true", help="leave the Triton skinny GEMM out")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    device = torch.device("cuda")
    copy_gbs = copy_bandwidth_gbs(device)
    print(f"{hardware()}; device copy bandwidth {copy_gbs:,.0f} GB/s (read + write)")
    results = []
    for name in args.shapes.split(","):
        n, k = SHAPES[name]
        nbytes = n * k * 2
        count = max(2, -(-L2_MARGIN_BYTES // nbytes))
        weights = [torch.randn(n, k, device=device).mul_(0.02).bfloat16() for _ in range(count)]
        for rows in (int(r) for r in args.rows.split(",")):
            x = torch.randn(rows, k, device=device).bfloat16()
            for label, run in kernels(rows, not args.no_skinny).items():
                us = graph_us_per_call(run, x, weights, args.replays)
                gbs = nbytes / us / 1e3
                results.append({"shape": name, "n": n, "k": k, "rows": rows, "kernel": label,
                                "us": round(us, 2), "gbs": round(gbs, 1),
                                "floor_over_time": round(gbs / copy_gbs, 3)})
        del weights
        torch.cuda.empty_cache()
    table = [[r["shape"], f"{r['n']}x{r['k']}", r["rows"], r["kernel"], f"{r['us']:.2f}",
              f"{r['gbs']:,.0f}", f"{r['floor_over_time']:.3f}"] for r in results]
    print(markdown_table(["shape", "N x K", "rows", "kernel", "µs", "GB/s", "floor/time"], table))
    if args.out:
        Path(args.out).write_text(json.dumps({"hardware": hardware(), "copy_gbs": copy_gbs,
                                              "rows": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
