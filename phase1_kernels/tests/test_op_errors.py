"""A failed check inside a compiled op must raise RuntimeError and leave the process running.

On the H100 a failed ``TORCH_CHECK`` inside the CUDA ``small_batch_linear`` op once killed the
test process (segmentation fault) instead of raising (docs/phase1.md). Each case here calls an
op with arguments its C++ checks refuse, in a child process, so a crash shows up as this test's
failure with the signal instead of ending the whole run; the child also checks that the device
still works afterwards. On the CPU the same cases run against the CPU kernels.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from phase1_kernels.ops import extension

# (case name, Python that calls torch.ops.lightvllm.* with bad arguments on device `dev`)
CASES = {
    "rms_norm_weight_size": "out = torch.empty(4, 64, device=dev)\n"
                            "ops.rms_norm(out, torch.randn(4, 64, device=dev), "
                            "torch.ones(32, device=dev), 1e-6)",
    "fused_add_rms_norm_dtype": "ops.fused_add_rms_norm(torch.randn(4, 64, device=dev), "
                                "torch.randn(4, 64, device=dev, dtype=torch.float16), "
                                "torch.ones(64, device=dev), 1e-6)",
    "silu_and_mul_odd_width": "out = torch.empty(4, 32, device=dev)\n"
                              "ops.silu_and_mul(out, torch.randn(4, 63, device=dev))",
    "vector_add_shapes": "ops.vector_add(torch.randn(8, device=dev), torch.randn(9, device=dev))",
}
CUDA_ONLY = {
    "small_batch_linear_rows": "w = torch.randn(32, 64, device=dev, dtype=torch.bfloat16)\n"
                               "out = torch.empty(9, 32, device=dev, dtype=torch.bfloat16)\n"
                               "ops.small_batch_linear(out, torch.randn(9, 64, device=dev, "
                               "dtype=torch.bfloat16), w, 2)",
    "small_batch_linear_silu_odd": "w = torch.randn(15, 64, device=dev, dtype=torch.bfloat16)\n"
                                   "out = torch.empty(2, 7, device=dev, dtype=torch.bfloat16)\n"
                                   "ops.small_batch_linear_silu(out, torch.randn(2, 64, device=dev, "
                                   "dtype=torch.bfloat16), w, 4)",
    "mma_linear_rows": "w = torch.randn(32, 64, device=dev, dtype=torch.bfloat16)\n"
                       "out = torch.empty(17, 32, device=dev, dtype=torch.bfloat16)\n"
                       "ops.mma_linear(out, torch.randn(17, 64, device=dev, dtype=torch.bfloat16), w, 8, 1)",
    "mma_linear_k": "w = torch.randn(32, 48, device=dev, dtype=torch.bfloat16)\n"
                    "out = torch.empty(2, 32, device=dev, dtype=torch.bfloat16)\n"
                    "ops.mma_linear(out, torch.randn(2, 48, device=dev, dtype=torch.bfloat16), w, 8, 1)",
}

CHILD = """
import sys, torch
from phase1_kernels.ops import compiled
ops = compiled._ops()
dev = sys.argv[1]
try:
{body}
except RuntimeError as error:
    print("raised:", str(error).splitlines()[0])
else:
    sys.exit("no error was raised")
# the process and the device still work after the refusal
x = torch.ones(1024, device=dev)
assert float((x + x).sum()) == 2048.0
print("still alive")
"""


def _run_child(device: str, body: str) -> subprocess.CompletedProcess:
    indented = "\n".join("    " + line for line in body.splitlines())
    return subprocess.run([sys.executable, "-c", CHILD.format(body=indented), device],
                          capture_output=True, text=True, timeout=300)


def _cases():
    for name, body in CASES.items():
        yield pytest.param("cpu", body, id=f"cpu-{name}")
        yield pytest.param("cuda", body, id=f"cuda-{name}", marks=pytest.mark.gpu)
    for name, body in CUDA_ONLY.items():
        yield pytest.param("cuda", body, id=f"cuda-{name}", marks=pytest.mark.gpu)


@pytest.mark.parametrize("device,body", list(_cases()))
def test_a_refused_call_raises_and_the_process_lives(device, body):
    reason = extension.why_unavailable(device)
    if reason:
        pytest.skip(reason)
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    child = _run_child(device, body)
    assert child.returncode == 0, (
        f"the child exited with {child.returncode} (a negative code is the signal that killed "
        f"it)\nstdout: {child.stdout}\nstderr: {child.stderr[-2000:]}")
    assert "raised:" in child.stdout and "still alive" in child.stdout
