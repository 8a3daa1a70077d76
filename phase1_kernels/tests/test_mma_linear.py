"""The tensor-core weight stream (``mma_linear`` in ``csrc/cuda/mma_linear_kernel.cuh``) against
float64, its SiLU·mul epilogue against the two kernels, its refusals, and its place in the
measured choice of ``layers/gpu_linear.py``. CUDA only: on the CPU the refusals and the mode
plumbing run (conftest skips `gpu`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shared.fixtures import assert_matmul_matches_float64 as check

from phase1_kernels.layers import gpu_linear
from phase1_kernels.layers.linear import MergedLinear, ReplicatedLinear
from phase1_kernels.ops import compiled


def test_what_the_kernel_refuses_is_named_before_any_launch():
    bf16 = dict(dtype=torch.bfloat16)
    w = torch.randn(32, 64, **bf16)
    refusal = compiled.mma_linear_refusal
    assert "one CUDA device" in refusal(torch.randn(16, 64, **bf16), w)  # valid but on the CPU
    assert "at most 16 rows" in refusal(torch.randn(17, 64, **bf16), w)
    assert "multiple of 32" in refusal(torch.randn(2, 48, **bf16), w[:, :48].contiguous())
    assert "multiples of 8" in refusal(torch.randn(4, 70, **bf16)[:, :64], w)  # row stride 70
    assert "float16 or bfloat16" in refusal(torch.randn(2, 64), w.float())
    assert "warps" in refusal(torch.randn(2, 64, **bf16), w, 6)
    assert "tiles" in refusal(torch.randn(2, 64, **bf16), w, 8, 3)
    with pytest.raises(ValueError, match="at most 16 rows"):
        compiled.mma_linear(torch.randn(17, 64, **bf16), w)
    with pytest.raises(ValueError, match="even number"):
        compiled.mma_linear_silu(torch.randn(2, 64, **bf16), w[:31])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 8, 9, 12, 16])
@pytest.mark.parametrize("n,k", [(4096, 4096), (6144, 4096), (4096, 14336), (1000, 768), (13, 64)])
@pytest.mark.parametrize("warps,tiles", [(4, 1), (8, 1), (8, 2)])
def test_matches_float64_on_gpu(rows, n, k, dtype, warps, tiles):
    gen = torch.Generator(device="cuda").manual_seed(rows * 7 + n + k)
    x = torch.randn(rows, k, generator=gen, device="cuda").to(dtype)
    w = torch.randn(n, k, generator=gen, device="cuda").to(dtype)
    check(x, w, compiled.mma_linear(x, w, warps, tiles))


@pytest.mark.gpu
def test_strided_rows_and_the_rows_it_must_not_touch():
    gen = torch.Generator(device="cuda").manual_seed(1)
    big = torch.randn(22, 1024 + 64, generator=gen, device="cuda").bfloat16()
    x = big[::2, :1024]  # 11 rows, row stride 2176 elements: a multiple of 8, 16-byte aligned
    w = torch.randn(300, 1024, generator=gen, device="cuda").bfloat16()
    out = torch.full((13, 300), 7.0, device="cuda", dtype=torch.bfloat16)
    torch.ops.lightvllm.mma_linear(out[1:12], x, w, 8, 2)
    check(x, w, out[1:12])
    assert bool((out[0] == 7).all()) and bool((out[12] == 7).all())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 3, 8, 11, 16])
@pytest.mark.parametrize("d,k", [(14336, 4096), (300, 1024), (7, 64)])
@pytest.mark.parametrize("warps,tiles", [(4, 1), (8, 2)])
def test_fused_silu_is_the_two_kernels_bit_for_bit(rows, d, k, dtype, warps, tiles):
    """The epilogue gives exactly mma_linear then silu_and_mul (the gate and up sums are the same
    MMAs in another row of the tile), and SiLU·mul of the float64 product to rounding."""
    gen = torch.Generator(device="cuda").manual_seed(rows + d)
    x = torch.randn(rows, k, generator=gen, device="cuda").to(dtype)
    w = (0.05 * torch.randn(2 * d, k, generator=gen, device="cuda")).to(dtype)
    fused = compiled.mma_linear_silu(x, w, warps, tiles)
    assert fused.shape == (rows, d) and fused.dtype == dtype
    two = torch.empty_like(fused)
    torch.ops.lightvllm.silu_and_mul(two, compiled.mma_linear(x, w, warps, tiles))
    assert torch.equal(fused, two)
    h = x.double() @ w.double().T
    ref = F.silu(h[:, :d]) * h[:, d:]
    assert (fused.double() - ref).abs().max().item() <= 0.02 * ref.abs().max().item() + 1e-3


@pytest.mark.gpu
def test_forced_layers_give_f_linear_and_the_same_bits_in_a_graph(monkeypatch):
    """mode="mma": every bucket up to 16 rows takes the kernel (the MLP's gate|up with its
    activation), the outputs are F.linear's to rounding and a graph replays the eager bits."""
    from phase1_kernels.layers.activation import SiluAndMul

    torch.manual_seed(0)
    plain = ReplicatedLinear(1024, 2048, bias=True).to("cuda", torch.bfloat16)
    gate_up = MergedLinear(1024, [512, 512]).to("cuda", torch.bfloat16)
    for layer in (plain, gate_up):
        layer.weight.data.normal_(std=0.02)
    plain.bias.data.normal_(std=0.02)  # the layer allocates it uninitialised (values to 1e27 seen)
    choices = gpu_linear.tune_small_batch_linears(torch.nn.ModuleList([plain, gate_up]), mode="mma")
    assert {r: c.label[:3] for r, c in choices[(2048, 1024)].configs.items()} == {
        r: "mma" for r in gpu_linear.ROW_BUCKETS}
    launched = []
    real = compiled.mma_linear_silu
    monkeypatch.setattr(compiled, "mma_linear_silu", lambda *a, **k: launched.append(1) or real(*a, **k))
    act = SiluAndMul("cpp", device="cuda")
    for rows in (1, 5, 16, 40):  # 40: above 16 rows, cuBLAS
        x = torch.randn(rows, 1024, device="cuda", dtype=torch.bfloat16)
        ref = F.linear(x.double(), plain.weight.double(), plain.bias.double())
        assert (plain(x).double() - ref).abs().max().item() < 0.05
        assert torch.equal(gate_up.forward_act(x, act), act(gate_up(x)))
    assert len(launched) == 3
    static_x = torch.randn(3, 1024, device="cuda", dtype=torch.bfloat16)
    eager = plain(static_x), gate_up.forward_act(static_x, act)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = plain(static_x), gate_up.forward_act(static_x, act)
    graph.replay()
    assert all(torch.equal(a, b) for a, b in zip(static_out, eager))


@pytest.mark.gpu
def test_switching_the_kernel_on_measures_again_in_the_same_process(monkeypatch):
    """The per-process memory of choices is keyed by the candidates too: a choice made without
    the tensor-core kernel (LIGHTVLLM_MMA_LINEAR=0) does not answer once the default adds it."""
    def model():
        layer = ReplicatedLinear(1024, 1536).to("cuda", torch.bfloat16)
        layer.weight.data.normal_(std=0.02)
        return layer

    monkeypatch.setenv(gpu_linear.MMA_ENV, "0")
    without = gpu_linear.tune_small_batch_linears(model(), mode="tuned")[(1536, 1024)]
    monkeypatch.delenv(gpu_linear.MMA_ENV)
    with_mma = gpu_linear.tune_small_batch_linears(model(), mode="tuned")[(1536, 1024)]
    assert with_mma is not without
    assert any(label.startswith("mma") for label in with_mma.timings_us[16])
    assert not any(label.startswith("mma") for label in without.timings_us[16])
