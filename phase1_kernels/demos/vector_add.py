"""The roadmap's first exercise: c = a + b as our own kernel, called from Python.

The kernel is registered as ``torch.ops.lightvllm.vector_add`` by the C++ extension (a CPU loop
with at::parallel_for, and on a GPU a grid-stride CUDA kernel with 16-byte loads). This demo
checks it against PyTorch's ``a + b`` and times both: an elementwise add reads 2 values and writes
1, so its speed is bytes per second, and a plain kernel should match PyTorch's.

    python phase1_kernels/demos/vector_add.py [--device cuda]
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
from phase1_kernels.ops import compiled, extension  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    if not extension.is_available(device):
        sys.exit(f"the extension is not available on {device}: {extension.why_unavailable(device)}")
    sizes = [1 << 10, 1 << 16, 1 << 20, 1 << 24] + ([1 << 27] if device.type == "cuda" else [])
    print(f"vector_add on {device}: ours (torch.ops.lightvllm.vector_add) vs PyTorch a + b")
    print(f"{'n':>11} {'dtype':>9} {'max err':>9} {'ours us':>10} {'torch us':>10} {'ours GB/s':>10} {'torch GB/s':>11}")
    for dtype in (torch.float32, torch.bfloat16):
        for n in sizes:
            a = torch.randn(n, device=device).to(dtype)
            b = torch.randn(n, device=device).to(dtype)
            err = (compiled.vector_add(a, b).float() - (a + b).float()).abs().max().item()
            t_ours = median_seconds(lambda: compiled.vector_add(a, b), device)
            t_torch = median_seconds(lambda: a + b, device)
            nbytes = 3 * n * a.element_size()
            print(f"{n:>11} {str(dtype).replace('torch.', ''):>9} {err:>9.2e} {t_ours * 1e6:>10.1f} "
                  f"{t_torch * 1e6:>10.1f} {nbytes / t_ours / 1e9:>10.1f} {nbytes / t_torch / 1e9:>11.1f}")


if __name__ == "__main__":
    main()
