"""B1: bandwidth of the phase-1 kernels, every implementation, as a markdown table.

Default shapes are the standard workload B1 (bf16, 16384 tokens): rms_norm and fused_add_rms_norm
at hidden 4096; RoPE (NeoX) on q [T, 32*128], k [T, 8*128] with an fp32 cos/sin cache
[4096, 128] and random positions; silu_and_mul on [T, 2*14336]. Each op is timed for native
eager, torch.compile(native), Triton and the C++/CUDA kernels (whichever run on the device): the
median of many runs (triton.testing.do_bench on CUDA, a wall clock on CPU). GB/s counts the
minimal bytes: every input read once and every output written once (in-place tensors: read and
written), so 100% would be a kernel that moves nothing more than it must. The reference is the
device's copy bandwidth measured in the same run (a device-to-device copy of ``--copy-mib``
random bytes, read + write counted), not a constant: the H100 gave ~3.0 TB/s, the H200 ~4.3.

    python phase1_kernels/benchmarks/bench_kernels.py                      # B1 on cuda
    python phase1_kernels/benchmarks/bench_kernels.py --device cpu --tokens 256 --no-compile
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
for p in (ROOT / "shared" / "src", ROOT / "phase1_kernels" / "src"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from phase1_kernels.ops import available_impls, get_ops, native  # noqa: E402
from shared.bench import copy_bandwidth_gbs  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Row:
    op: str
    impl: str
    time_us: float
    bytes: int
    gbs: float
    pct_copy: float  # % of the copy bandwidth measured in the same run
    vs_compile: float | None = None


def make_cases(args, device, dtype):
    """op name -> (fn(ops) -> callable taking no args, minimal bytes)."""
    T, H, inter = args.tokens, args.hidden, args.intermediate
    es = torch.finfo(dtype).bits // 8
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(dt).to(device)

    cases = {}
    x, w = rnd(T, H), rnd(H)
    cases["rms_norm"] = (lambda ops: (lambda: ops.rms_norm(x, w, 1e-6)), 2 * T * H * es + H * es)
    xr, res = rnd(T, H), rnd(T, H)
    cases["fused_add_rms_norm"] = (
        lambda ops: (lambda: ops.fused_add_rms_norm(xr, res, w, 1e-6)), 4 * T * H * es + H * es)
    hs, qh, kh, max_pos = 128, 32, 8, 4096
    inv_freq = 1.0 / 500000.0 ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs)
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq)
    cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(device)
    pos = torch.randint(0, max_pos, (T,), generator=g).to(device)
    q, k = rnd(T, qh * hs), rnd(T, kh * hs)
    rope_bytes = 2 * T * (qh + kh) * hs * es + T * 8 + cache.numel() * 4
    cases["rotary_embedding"] = (
        lambda ops: (lambda: ops.rotary_embedding(pos, q, k, hs, cache, True)), rope_bytes)
    a = rnd(T, 2 * inter)
    cases["silu_and_mul"] = (lambda ops: (lambda: ops.silu_and_mul(a)), 3 * T * inter * es)
    return cases


class _CompiledNative:
    """native ops under torch.compile (one compiled function per op)."""

    def __init__(self):
        self.rms_norm = torch.compile(native.rms_norm)
        self.fused_add_rms_norm = torch.compile(native.fused_add_rms_norm)
        self.rotary_embedding = torch.compile(native.rotary_embedding)
        self.silu_and_mul = torch.compile(native.silu_and_mul)


def _fused_add_rms_norm_in_place(x, residual, weight, eps):
    out, summed = native.fused_add_rms_norm(x, residual, weight, eps)
    x.copy_(out)
    residual.copy_(summed)
    return x, residual


class _CompiledInPlace(_CompiledNative):
    """As ``compile``, but fused_add_rms_norm writes into x and residual as our kernels do
    (``compile`` returns two new tensors): the same contract, so the same stores."""

    def __init__(self):
        super().__init__()
        self.fused_add_rms_norm = torch.compile(_fused_add_rms_norm_in_place)


COMPILED_IMPLS = {"compile": _CompiledNative, "compile_inplace": _CompiledInPlace}


def time_us(fn, device, reps: int) -> float:
    if device.type == "cuda":
        import triton.testing

        return 1e3 * triton.testing.do_bench(fn, warmup=50, rep=reps, return_mode="median")
    for _ in range(3):
        fn()
    samples = []
    for _ in range(max(5, reps // 10)):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(samples)


def main(argv=None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--impls", default="native,compile,triton,cpp",
                    help="also compile_inplace: compile with fused_add_rms_norm writing in place")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile(native)")
    ap.add_argument("--ops", default="rms_norm,fused_add_rms_norm,rotary_embedding,silu_and_mul")
    ap.add_argument("--rep-ms", type=int, default=200, help="timing budget per case (ms, CUDA)")
    ap.add_argument("--copy-mib", type=int, default=1024,
                    help="size of the device-to-device copy that gives the reference bandwidth")
    ap.add_argument("--out", help="write the rows and the setting as JSON here")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    avail = available_impls(device)
    wanted = [i for i in args.impls.split(",") if not (i in COMPILED_IMPLS and args.no_compile)]
    impls = [i for i in wanted if i in COMPILED_IMPLS or i in avail]
    cases = make_cases(args, device, dtype)
    modules = {i: (COMPILED_IMPLS[i]() if i in COMPILED_IMPLS else get_ops(i)) for i in impls}
    copy_gbs = copy_bandwidth_gbs(device, args.copy_mib << 20)

    rows: list[Row] = []
    for op in args.ops.split(","):
        make, nbytes = cases[op]
        for impl in impls:
            try:
                t = time_us(make(modules[impl]), device, args.rep_ms)
            except Exception as error:  # e.g. Inductor's CPU codegen rejects compile_inplace
                if impl not in COMPILED_IMPLS:
                    raise
                print(f"{op} / {impl}: torch.compile failed, left out ({type(error).__name__}: "
                      f"{str(error).splitlines()[0][:200]})")
                continue
            gbs = nbytes / t / 1e3
            rows.append(Row(op, impl, t, nbytes, gbs, 100 * gbs / copy_gbs))
        base = next((r.time_us for r in rows if r.op == op and r.impl == "compile"), None)
        for r in rows:
            if r.op == op and base:
                r.vs_compile = base / r.time_us

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\nB1 kernels: {dev_name}, torch {torch.__version__}, {args.dtype}, tokens {args.tokens}, "
          f"hidden {args.hidden}, intermediate {args.intermediate}; device copy (same run, "
          f"{args.copy_mib} MiB, read + write): {copy_gbs:.0f} GB/s")
    print("| op | impl | time (µs) | MB moved | GB/s | % of copy | speed-up vs torch.compile |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        vs = f"{r.vs_compile:.2f}x" if r.vs_compile else "-"
        print(f"| {r.op} | {r.impl} | {r.time_us:.1f} | {r.bytes / 1e6:.1f} | {r.gbs:.0f} | "
              f"{r.pct_copy:.1f} | {vs} |")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "device": dev_name, "torch": torch.__version__, "setting": vars(args),
            "copy_gbs": copy_gbs,
            "rows": [asdict(r) for r in rows]}, indent=2))
    return rows


if __name__ == "__main__":
    main()
