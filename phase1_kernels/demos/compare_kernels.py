"""Every phase-1 op, every implementation available on a device: error and time, side by side.

The error is the largest absolute difference from the native reference run in float64 on the
same (upcast) inputs; the time is the median of several runs.

    python phase1_kernels/demos/compare_kernels.py --device cpu --tokens 64 --hidden 576
    python phase1_kernels/demos/compare_kernels.py --device cuda --tokens 4096 --hidden 4096
(on CPU, Triton shows up only with TRITON_INTERPRET=1, and is slow there.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
for p in (ROOT / "shared" / "src", ROOT / "phase1_kernels" / "src"):
    sys.path.insert(0, str(p))

from shared.bench import median_seconds  # noqa: E402
from phase1_kernels.ops import available_impls, get_ops, native  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    T, H, hs = args.tokens, args.hidden, args.head_size
    torch.manual_seed(0)
    x = torch.randn(T, H).to(dtype).to(device)
    res = torch.randn(T, H).to(dtype).to(device)
    w = (torch.rand(H) + 0.5).to(dtype).to(device)
    q = torch.randn(T, args.heads * hs).to(dtype).to(device)
    k = torch.randn(T, args.kv_heads * hs).to(dtype).to(device)
    inv = 1.0 / 10000 ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs)
    f = torch.outer(torch.arange(2048, dtype=torch.float32), inv)
    cache = torch.cat((f.cos(), f.sin()), -1).to(device)
    pos = torch.randint(0, 2048, (T,), device=device)
    g = torch.randn(T, 2 * 4 * H).to(dtype).to(device)

    def d(t):
        return t.double()

    cases = {
        "rms_norm": (lambda o: o.rms_norm(x, w, 1e-6), lambda: native.rms_norm(d(x), d(w), 1e-6)),
        "fused_add_rms_norm": (lambda o: o.fused_add_rms_norm(x.clone(), res.clone(), w, 1e-6),
                               lambda: native.fused_add_rms_norm(d(x), d(res), d(w), 1e-6)),
        "rotary_embedding": (lambda o: o.rotary_embedding(pos, q.clone(), k.clone(), hs, cache, True),
                             lambda: native.rotary_embedding(pos, d(q), d(k), hs, d(cache), True)),
        "silu_and_mul": (lambda o: o.silu_and_mul(g), lambda: native.silu_and_mul(d(g))),
    }
    impls = available_impls(device)
    print(f"device {device}, dtype {args.dtype}, tokens {T}, hidden {H}; implementations: {impls}")
    print(f"{'op':<20} {'impl':<8} {'max abs err':>12} {'time (us)':>11}")
    for name, (run, ref) in cases.items():
        want = ref()
        want = want if isinstance(want, tuple) else (want,)
        for impl in impls:
            ops = get_ops(impl)
            got = run(ops)
            got = got if isinstance(got, tuple) else (got,)
            err = max((a.double() - b).abs().max().item() for a, b in zip(got, want))
            t = median_seconds(lambda: run(ops), device, args.iters)
            print(f"{name:<20} {impl:<8} {err:>12.3e} {t * 1e6:>11.1f}")


if __name__ == "__main__":
    main()
