"""Programmatic dependent launch (Hopper; on by default, ``LIGHTVLLM_PDL=0`` turns it off) of
the CUDA norm and activation kernels: behind a GEMM whose output they read, captured in a CUDA graph and replayed, they give
the bit-identical results of the ordinary launch (each waits for the GEMM's writes)."""

from __future__ import annotations

import pytest
import torch

from phase1_kernels.ops import extension

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _chain(x, w_up, w_down, residual, norm_w):
    """gate_up GEMM -> silu_and_mul -> down GEMM -> fused add + RMSNorm -> rms_norm."""
    ops = torch.ops.lightvllm
    gate_up = x @ w_up.T
    act = torch.empty(x.shape[0], w_up.shape[0] // 2, dtype=x.dtype, device=x.device)
    ops.silu_and_mul(act, gate_up)
    hidden = act @ w_down.T
    ops.fused_add_rms_norm(hidden, residual, norm_w, 1e-5)
    out = torch.empty_like(hidden)
    ops.rms_norm(out, residual, norm_w, 1e-5)
    return hidden, out


@pytest.mark.parametrize("rows", [1, 16, 300])
def test_pdl_chain_in_a_cuda_graph_equals_plain_launch(monkeypatch, rows):
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm90")
    if not extension.is_available("cuda"):
        pytest.skip(extension.why_unavailable("cuda"))
    gen = torch.Generator(device="cuda").manual_seed(0)
    bf16 = dict(device="cuda", dtype=torch.bfloat16, generator=gen)
    x = torch.randn(rows, 4096, **bf16)
    w_up = torch.randn(2 * 14336, 4096, **bf16) * 0.02
    w_down = torch.randn(4096, 14336, **bf16) * 0.02
    residual0 = torch.randn(rows, 4096, **bf16)
    norm_w = torch.rand(4096, **bf16) + 0.5
    results = {}
    for pdl in ("0", "1"):
        monkeypatch.setenv("LIGHTVLLM_PDL", pdl)
        residual = residual0.clone()
        _chain(x, w_up, w_down, residual, norm_w)  # warm-up outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            hidden, out = _chain(x, w_up, w_down, residual, norm_w)
        for _ in range(3):
            residual.copy_(residual0)
            graph.replay()
        torch.cuda.synchronize()
        results[pdl] = (hidden.clone(), out.clone(), residual.clone())
    for a, b in zip(results["0"], results["1"]):
        assert torch.equal(a, b)
    assert results["1"][1].abs().sum() > 0
