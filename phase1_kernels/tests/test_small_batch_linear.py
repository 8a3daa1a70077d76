"""The CUDA weight-streaming GEMM (``small_batch_linear`` in ``csrc/cuda/kernels_cuda.cu``)
against float64, its refusals, and its place in the measured choice of
``layers/gpu_linear.py``. The kernel is CUDA only: on the CPU only the mode plumbing runs (conftest skips `gpu`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shared.fixtures import assert_matmul_matches_float64 as check

from phase1_kernels.layers import gpu_linear, weight_prefetch
from phase1_kernels.layers.linear import ReplicatedLinear
from phase1_kernels.ops import compiled, extension



def test_modes_and_their_candidates(monkeypatch):
    for mode in ("tuned", "gemv", "mma", "auto", "skinny", "cublas"):
        assert gpu_linear.resolve_mode(mode) == mode
    monkeypatch.setenv(gpu_linear.ENV_VAR, "TUNED")
    assert gpu_linear.resolve_mode() == "tuned"
    assert gpu_linear.candidates("cublas") == []
    has_cuda_kernels = extension.why_unavailable("cuda") == ""
    monkeypatch.delenv(gpu_linear.MMA_ENV, raising=False)  # the default: the tensor-core kernel too
    with_mma = [c.label for c in gpu_linear.candidates("tuned")]
    monkeypatch.setenv(gpu_linear.MMA_ENV, "0")  # its baseline: the GEMV alone
    labels = [c.label for c in gpu_linear.candidates("tuned")]
    assert labels == (["gemv1", "gemv2", "gemv4"] if has_cuda_kernels else [])
    assert with_mma == (labels + ["mma4", "mma8", "mma4x2", "mma8x2"] if has_cuda_kernels else [])
    assert all(c.max_rows == gpu_linear.GEMV_MAX_ROWS for c in gpu_linear.candidates("gemv"))
    assert all(c.max_rows == 16 for c in gpu_linear.candidates("mma"))


def test_what_the_kernel_refuses_is_named_before_any_launch():
    bf16 = dict(dtype=torch.bfloat16)
    w = torch.randn(32, 64, **bf16)
    refusal = compiled.small_batch_linear_refusal
    assert "one CUDA device" in refusal(torch.randn(2, 64, **bf16), w)  # valid but on the CPU
    assert "float16 or bfloat16" in refusal(torch.randn(2, 64), w.float())
    assert "at most 8 rows" in refusal(torch.randn(9, 64, **bf16), w)
    assert "multiples of 8" in refusal(torch.randn(2, 60, **bf16), w[:, :60].contiguous())
    assert "multiples of 8" in refusal(torch.randn(4, 70, **bf16)[:, :64], w)  # row stride 70
    assert r"[M, K]" in refusal(torch.randn(2, 32, **bf16), w)
    assert "cols_per_warp" in refusal(torch.randn(2, 64, **bf16), w, 3)
    with pytest.raises(ValueError, match="at most 8 rows"):
        compiled.small_batch_linear(torch.randn(9, 64, **bf16), w)


def test_a_cpu_model_is_left_alone():
    layer = ReplicatedLinear(64, 32)
    assert gpu_linear.tune_small_batch_linears(layer, mode="gemv") == {}
    assert "apply_linear" not in layer.__dict__


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("n,k", [(4096, 4096), (6144, 4096), (4096, 14336), (1000, 776), (13, 8)])
@pytest.mark.parametrize("cols", [1, 2, 4])
def test_matches_float64_on_gpu(rows, n, k, dtype, cols):
    gen = torch.Generator(device="cuda").manual_seed(rows * 7 + n + k)
    x = torch.randn(rows, k, generator=gen, device="cuda").to(dtype)
    w = torch.randn(n, k, generator=gen, device="cuda").to(dtype)
    check(x, w, compiled.small_batch_linear(x, w, cols))


@pytest.mark.gpu
def test_strided_rows_and_the_rows_it_must_not_touch():
    gen = torch.Generator(device="cuda").manual_seed(1)
    big = torch.randn(6, 1024 + 64, generator=gen, device="cuda").bfloat16()
    x = big[::2, :1024]  # row stride 2176 elements: a multiple of 8, 16-byte aligned
    w = torch.randn(300, 1024, generator=gen, device="cuda").bfloat16()
    out = torch.full((5, 300), 7.0, device="cuda", dtype=torch.bfloat16)
    torch.ops.lightvllm.small_batch_linear(out[1:4], x, w, 2)
    check(x, w, out[1:4])
    assert bool((out[0] == 7).all()) and bool((out[4] == 7).all())


@pytest.mark.gpu
def test_refuses_what_it_cannot_do():
    w = torch.randn(32, 64, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="one CUDA device"):
        compiled.small_batch_linear(torch.randn(2, 64, dtype=torch.bfloat16), w.cpu())
    with pytest.raises(ValueError, match="at most 8 rows"):
        compiled.small_batch_linear(torch.randn(9, 64, device="cuda", dtype=torch.bfloat16), w)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        compiled.small_batch_linear(torch.randn(2, 64, device="cuda"), w.float())
    with pytest.raises(ValueError, match="multiples of 8"):
        compiled.small_batch_linear(torch.randn(2, 60, device="cuda", dtype=torch.bfloat16),
                                    w[:, :60].contiguous())
    with pytest.raises(ValueError, match="cols_per_warp"):
        compiled.small_batch_linear(torch.randn(2, 64, device="cuda", dtype=torch.bfloat16), w, 3)


@pytest.mark.gpu
@pytest.mark.parametrize("timing", ["eager", "graph"])
@pytest.mark.parametrize("mode", ["tuned", "gemv"])
def test_tuned_layers_give_f_linear_and_replay_in_a_graph(mode, timing, monkeypatch):
    monkeypatch.setenv(gpu_linear.TIMING_ENV, timing)
    monkeypatch.setenv("LIGHTVLLM_GPU_LINEAR_CACHE", "0")  # measure here, in this timing
    torch.manual_seed(0)
    layers = [ReplicatedLinear(1024, 2048, bias=b).to("cuda", torch.bfloat16) for b in (False, True)]
    for layer in layers:
        for p in layer.parameters():
            p.data.normal_(std=0.02)
    choices = gpu_linear.tune_small_batch_linears(torch.nn.ModuleList(layers), mode=mode)
    choice = choices[(2048, 1024)]
    assert set(choice.timings_us) == set(gpu_linear.ROW_BUCKETS)
    assert all(0 < us < 1e4 for times in choice.timings_us.values() for us in times.values())
    if mode == "gemv":  # forced where it applies: every bucket of up to 8 rows
        assert {r: c.label[:4] for r, c in choice.configs.items()} == {1: "gemv", 2: "gemv",
                                                                         4: "gemv", 8: "gemv"}
    for layer in layers:
        for rows in (1, 3, 8, 12, 40):
            x = torch.randn(rows, 1024, device="cuda", dtype=torch.bfloat16)
            bias = None if layer.bias is None else layer.bias.double()
            ref = F.linear(x.double(), layer.weight.double(), bias)
            assert (layer(x).double() - ref).abs().max().item() < 0.05
    x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
    eager = layers[1](x)
    graph = torch.cuda.CUDAGraph()
    static_x = x.clone()
    with torch.cuda.graph(graph):
        static_out = layers[1](static_x)
    graph.replay()
    assert torch.equal(static_out, eager)


@pytest.mark.gpu
def test_a_second_model_reuses_the_first_ones_choice():
    """Timing can flip a near-tie between runs; within a process the choice is measured once."""
    def model():
        layer = ReplicatedLinear(1024, 2048).to("cuda", torch.bfloat16)
        layer.weight.data.normal_(std=0.02)
        return layer

    first = gpu_linear.tune_small_batch_linears(model(), mode="tuned")[(2048, 1024)]
    second = gpu_linear.tune_small_batch_linears(model(), mode="tuned")[(2048, 1024)]
    assert second is first


# ---- gate|up with SiLU·mul as the epilogue (small_batch_linear_silu) ------------------------------
def _gate_up(d: int, k: int, rows: int, dtype=torch.bfloat16, seed: int = 0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(rows, k, generator=gen, device="cuda").to(dtype)
    w = (0.05 * torch.randn(2 * d, k, generator=gen, device="cuda")).to(dtype)
    return x, w


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("d,k", [(14336, 4096), (300, 1024), (7, 64)])
@pytest.mark.parametrize("cols", [1, 2, 4])
def test_fused_silu_is_the_two_kernels_bit_for_bit(rows, d, k, dtype, cols):
    """One kernel gives exactly what small_batch_linear then silu_and_mul give (the same sums,
    rounded the same way), and that is SiLU·mul of the float64 product to rounding."""
    x, w = _gate_up(d, k, rows, dtype, seed=rows + d)
    fused = compiled.small_batch_linear_silu(x, w, cols)
    assert fused.shape == (rows, d) and fused.dtype == dtype
    two = torch.empty_like(fused)
    torch.ops.lightvllm.silu_and_mul(two, compiled.small_batch_linear(x, w, cols))
    assert torch.equal(fused, two)
    h = x.double() @ w.double().T
    ref = F.silu(h[:, :d]) * h[:, d:]
    assert (fused.double() - ref).abs().max().item() <= 0.02 * ref.abs().max().item() + 1e-3


@pytest.mark.gpu
def test_fused_silu_refuses_an_odd_weight():
    x, w = _gate_up(8, 64, 2)
    with pytest.raises(ValueError, match="even number"):
        compiled.small_batch_linear_silu(x, w[:15])


@pytest.mark.gpu
@pytest.mark.parametrize("fuse", ["1", "0"])
def test_gate_up_layer_fuses_its_activation_where_the_gemv_is_chosen(monkeypatch, fuse):
    """A tuned gate|up layer: forward_act(x, SiluAndMul) is one kernel where the CUDA GEMV is the
    choice (LIGHTVLLM_FUSE_SILU=0: never), always the same bits as act(layer(x)), also in a graph."""
    from phase1_kernels.layers.activation import SiluAndMul
    from phase1_kernels.layers.linear import MergedLinear

    monkeypatch.setenv(gpu_linear.FUSE_SILU_ENV, fuse)
    torch.manual_seed(0)
    layer = MergedLinear(1024, [512, 512]).to("cuda", torch.bfloat16)
    layer.weight.data.normal_(std=0.02)
    act = SiluAndMul("cpp", device="cuda")
    gpu_linear.tune_small_batch_linears(layer, mode="gemv")
    assert ("forward_act" in layer.__dict__) == (fuse == "1")
    launched = []
    real = compiled.small_batch_linear_silu
    monkeypatch.setattr(compiled, "small_batch_linear_silu",
                        lambda *a, **k: launched.append(1) or real(*a, **k))
    for rows in (1, 3, 8, 12):  # 12: above the GEMV's 8 rows, cuBLAS then the activation
        x = torch.randn(rows, 1024, device="cuda", dtype=torch.bfloat16)
        assert torch.equal(layer.forward_act(x, act), act(layer(x)))
    assert len(launched) == (3 if fuse == "1" else 0)
    static_x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
    eager = layer.forward_act(static_x, act)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = layer.forward_act(static_x, act)
    graph.replay()
    assert torch.equal(static_out, eager)


def test_only_a_plain_gate_up_is_fused():
    """Two equal halves, no bias, nothing gathered: the cases where one kernel is the same."""
    from phase1_kernels.layers.linear import MergedLinear

    assert gpu_linear._fusable_gate_up(MergedLinear(64, [32, 32]))
    assert not gpu_linear._fusable_gate_up(MergedLinear(64, [32, 16]))
    assert not gpu_linear._fusable_gate_up(MergedLinear(64, [32, 32], bias=True))
    assert not gpu_linear._fusable_gate_up(ReplicatedLinear(64, 64))


# ---- the next layer's weight prefetched into L2 after a decode-size GEMM ---------------------------
def test_each_layer_prefetches_the_next_ones_weight_in_model_order(monkeypatch):
    layers = [ReplicatedLinear(64, 32), ReplicatedLinear(32, 64), ReplicatedLinear(64, 16)]
    weight_prefetch.chain(layers, 1 << 20)
    assert layers[0].__dict__["prefetch_next"][0] is layers[1].weight
    assert layers[1].__dict__["prefetch_next"] == (layers[2].weight, 1 << 20)
    assert "prefetch_next" not in layers[2].__dict__  # the last one has nothing after it
    weight_prefetch.chain(layers, 0)  # off: every link removed
    assert not any("prefetch_next" in layer.__dict__ for layer in layers)
    assert weight_prefetch.nbytes(torch.device("cpu")) == 0
    monkeypatch.setenv(weight_prefetch.ENV_VAR, "0")
    assert weight_prefetch.nbytes(torch.device("cuda")) == 0


@pytest.mark.gpu
def test_prefetch_changes_no_value_and_refuses_a_strided_tensor():
    w = torch.randn(4096, 1024, device="cuda", dtype=torch.bfloat16)
    before = w.clone()
    compiled.prefetch_l2(w, 64 << 20)  # more than the tensor: clipped to it
    compiled.prefetch_l2(w, 0)
    torch.cuda.synchronize()
    assert torch.equal(w, before)
    with pytest.raises(RuntimeError, match="contiguous CUDA tensor"):
        compiled.prefetch_l2(w.t(), 1 << 20)


class _MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from phase1_kernels.layers.activation import SiluAndMul
        from phase1_kernels.layers.linear import MergedLinear

        self.gate_up = MergedLinear(256, [512, 512])
        self.down = ReplicatedLinear(512, 256)
        self.act = SiluAndMul("cpp", device="cuda")

    def forward(self, x):
        return x + self.down(self.gate_up.forward_act(x, self.act))


class _MLPStack(torch.nn.Sequential):
    """Three gated MLPs in a row: six linear layers whose weights chain into prefetches (module
    order is run order, as in the Llama model)."""

    def __init__(self):
        super().__init__(_MLP(), _MLP(), _MLP())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="the prefetch runs on Hopper (sm90+) only")
@pytest.mark.parametrize("mode", ["gemv", "cublas"])
def test_a_model_with_prefetches_gives_the_same_bits_also_in_a_graph(monkeypatch, mode):
    """Two tuned copies of one MLP stack, with and without the next-weight prefetch: the same
    output to the bit, eagerly and replayed from a CUDA graph; the chain follows module order
    (our GEMV or cuBLAS before each prefetch)."""
    def build(prefetch_mb: str):
        monkeypatch.setenv(weight_prefetch.ENV_VAR, prefetch_mb)
        torch.manual_seed(0)
        model = _MLPStack().to("cuda", torch.bfloat16)
        for p in model.parameters():
            p.data.normal_(std=0.05)
        gpu_linear.tune_small_batch_linears(model, mode=mode)
        return model

    if mode == "cublas":  # no candidates: the pass installs nothing, so nothing is chained
        assert not any("prefetch_next" in m.__dict__ for m in build("8").modules())
        return
    on, off = build("8"), build("0")
    order = [m for block in on for m in (block.gate_up, block.down)]
    assert [m.__dict__["prefetch_next"][0] for m in order[:-1]] == [m.weight for m in order[1:]]
    assert not any("prefetch_next" in m.__dict__ for m in off.modules())
    x = torch.randn(2, 256, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(on(x), off(x))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static = on(x)
        graph.replay()
        assert torch.equal(static, off(x))


def test_the_tensor_core_kernel_is_a_default_candidate_and_opts_out(monkeypatch):
    """On a machine with the CUDA kernels, ``tuned`` and ``auto`` time the tensor-core kernel
    unless LIGHTVLLM_MMA_LINEAR=0; the forced modes ignore the switch. (``candidates`` only builds
    closures, so the extension's availability can stand in for a GPU here.)"""
    monkeypatch.setattr(extension, "why_unavailable", lambda device: "")
    mma = ["mma4", "mma8", "mma4x2", "mma8x2"]
    monkeypatch.delenv(gpu_linear.MMA_ENV, raising=False)
    assert [c.label for c in gpu_linear.candidates("tuned")] == ["gemv1", "gemv2", "gemv4"] + mma
    assert [c.label for c in gpu_linear.candidates("auto")][3:7] == mma
    monkeypatch.setenv(gpu_linear.MMA_ENV, "0")
    assert [c.label for c in gpu_linear.candidates("tuned")] == ["gemv1", "gemv2", "gemv4"]
    assert not any(c.label.startswith("mma") for c in gpu_linear.candidates("auto"))
    assert [c.label for c in gpu_linear.candidates("mma")] == mma
