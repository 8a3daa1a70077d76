"""The small-batch GEMM (``ops/skinny_gemm.py``) against float64, and the layer pass that
chooses it or cuBLAS by measurement (``layers/gpu_linear.py``). On the CPU the kernel runs in
Triton's interpreter (fp32 and fp16: the interpreter's bf16 ``tl.dot`` is wrong, bf16 is tested
on the GPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shared.fixtures import assert_matmul_matches_float64 as check

from phase1_kernels.layers import gpu_linear
from phase1_kernels.layers.linear import ReplicatedLinear
from phase1_kernels.ops import skinny_gemm
from phase1_kernels.ops.skinny_gemm import CONFIGS, skinny_linear

CPU = pytest.mark.skipif(skinny_gemm.why_unavailable("cpu") != "",
                         reason="Triton on the CPU needs TRITON_INTERPRET=1")


@CPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rows,n,k", [(1, 48, 64), (5, 70, 100), (16, 33, 96), (3, 16, 769)])
def test_matches_float64_on_cpu(rows, n, k, dtype):
    gen = torch.Generator().manual_seed(rows * n + k)
    x = torch.randn(rows, k, generator=gen).to(dtype)
    w = torch.randn(n, k, generator=gen).to(dtype)
    check(x, w, skinny_linear(x, w))


@CPU
def test_strided_rows_and_zero_rows():
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(7, 80, generator=gen)
    x = big[::2, :64]  # row stride 160, contiguous last dim
    w = torch.randn(40, 64, generator=gen)
    check(x, w, skinny_linear(x, w))
    assert skinny_linear(torch.empty(0, 64), w).shape == (0, 40)


@CPU
def test_refuses_what_it_cannot_do():
    w = torch.randn(16, 32)
    with pytest.raises(ValueError, match="at most 16 rows"):
        skinny_linear(torch.randn(17, 32), w)
    with pytest.raises(ValueError, match=r"x must be \[M, K\]"):
        skinny_linear(torch.randn(2, 31), w)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        skinny_linear(torch.randn(32, 2).T, w)


def test_tuned_is_the_default_and_measures_only_the_cuda_kernels(monkeypatch):
    monkeypatch.delenv(gpu_linear.ENV_VAR, raising=False)
    assert gpu_linear.resolve_mode() == "tuned"  # docs/phase1.md: what it gives, and why margins
    assert all(c.label.startswith(("gemv", "mma")) for c in gpu_linear.candidates("tuned"))
    monkeypatch.setenv(gpu_linear.ENV_VAR, "CUBLAS")
    assert gpu_linear.resolve_mode() == "cublas"


def test_the_pass_leaves_cpu_layers_alone():
    layer = ReplicatedLinear(64, 32)
    layer.weight.data.normal_()
    assert gpu_linear.tune_small_batch_linears(layer, mode="skinny") == {}
    assert "apply_linear" not in layer.__dict__
    with pytest.raises(ValueError, match="LIGHTVLLM_GPU_LINEAR"):
        gpu_linear.resolve_mode("fastest")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 3, 8, 16])
@pytest.mark.parametrize("n,k", [(4096, 4096), (6144, 4096), (4096, 14336), (1000, 769)])
def test_matches_float64_on_gpu(rows, n, k, dtype):
    gen = torch.Generator(device="cuda").manual_seed(rows + n + k)
    x = torch.randn(rows, k, generator=gen, device="cuda").to(dtype)
    w = torch.randn(n, k, generator=gen, device="cuda").to(dtype)
    for config in CONFIGS:
        check(x, w, skinny_linear(x, w, config))


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["auto", "skinny", "cublas"])
def test_tuned_layers_give_f_linear(mode):
    torch.manual_seed(0)
    layers = torch.nn.Sequential(*[ReplicatedLinear(1024, 2048, bias=bias) for bias in (False, True)])
    layers.to("cuda", torch.bfloat16)
    for p in layers.parameters():
        p.data.normal_(std=0.02)
    choices = gpu_linear.tune_small_batch_linears(layers, mode=mode)
    if mode == "cublas":
        assert choices == {}
    else:
        assert set(choices) == {(2048, 1024)}
        choice = choices[(2048, 1024)]
        assert set(choice.timings_us) == set(gpu_linear.ROW_BUCKETS)
        if mode == "skinny":
            assert set(choice.configs) == set(gpu_linear.ROW_BUCKETS)
    for layer in layers:
        for rows in (1, 5, 16, 40):
            x = torch.randn(rows, 1024, device="cuda", dtype=torch.bfloat16)
            ref = F.linear(x.double(), layer.weight.double(),
                           None if layer.bias is None else layer.bias.double())
            out = layer(x)
            assert (out.double() - ref).abs().max().item() < 0.05
