"""Device smoke: versions, the backend's sys.path fix, one small FA4 call vs SDPA, compile time."""
import importlib.metadata as md
import subprocess
import sys
import time

import torch

for n in ("torch", "triton", "cuda-bindings", "cuda-python", "nvidia-cutlass-dsl-libs-base",
          "nvidia-cutlass-dsl-libs-core", "nvidia-cutlass-dsl-libs-cu13", "flash-attn-4",
          "quack-kernels", "apache-tvm-ffi", "torch-c-dlpack-ext", "einops"):
    try:
        print(n, md.version(n))
    except md.PackageNotFoundError:
        print(n, "MISSING")
print(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0), flush=True)
t = time.time()
from phase2_attention.backends import flash_attn_unavailable_reason, flash_attn_version
print("reason:", flash_attn_unavailable_reason(), "version:", flash_attn_version(),
      f"import {time.time() - t:.1f}s", flush=True)
from flash_attn.cute import flash_attn_varlen_func
import torch.nn.functional as F
for bs in (16, 128):
    q = torch.randn(300, 32, 128, device="cuda", dtype=torch.bfloat16)
    cache = torch.randn(2, 40, bs, 8, 128, device="cuda", dtype=torch.bfloat16)
    n = -(-300 // bs)
    table = torch.arange(1, n + 1, dtype=torch.int32, device="cuda")[None]
    t = time.time()
    out, _ = flash_attn_varlen_func(q, cache[0], cache[1],
                                    cu_seqlens_q=torch.tensor([0, 300], dtype=torch.int32, device="cuda"),
                                    seqused_k=torch.tensor([300], dtype=torch.int32, device="cuda"),
                                    page_table=table, max_seqlen_q=300, causal=True, num_splits=1)
    torch.cuda.synchronize()
    print(f"block {bs}: first call {time.time() - t:.1f}s", flush=True)
    k = cache[0][1:n + 1].flatten(0, 1)[:300]
    v = cache[1][1:n + 1].flatten(0, 1)[:300]
    ref = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                         v.transpose(0, 1)[None], is_causal=True, enable_gqa=True)[0].transpose(0, 1)
    print(f"block {bs}: max abs diff vs SDPA {(out.float() - ref.float()).abs().max().item():.4f}", flush=True)
env_path = [p for p in sys.path if "dsl_packages" not in p]
code = ("import sys; sys.path=%r; from phase2_attention.backends.flash_attn import _import_api; "
        "print('without dsl_packages on PYTHONPATH:', _import_api())" % env_path)
print(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout)
