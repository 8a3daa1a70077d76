"""Prepacked CPU linears (our AVX2 panel GEMM and oneDNN's): same results as F.linear (float64
reference), switchable back, layers that wrap the matmul in their own forward (phase 4's
parallel layers) packed too, and layers that replace the matmul itself left alone."""

import pytest
import torch
import torch.nn.functional as F

from phase1_kernels.layers import cpu_linear
from phase1_kernels.layers.linear import LinearFactory, ReplicatedLinear
from phase1_kernels.ops import extension

MODES = [
    pytest.param("packed", marks=pytest.mark.skipif(not extension.is_available("cpu"),
                                                    reason="needs the C++ extension")),
    pytest.param("onednn", marks=pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                                    reason="needs oneDNN")),
]


def filled(layer):
    torch.manual_seed(0)
    for p in layer.parameters():
        p.data.normal_()
    return layer


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rows", [1, 5, 7, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_matches_float64(mode, rows, bias):
    layer = filled(ReplicatedLinear(577, 1031, bias=bias))  # 1031: a partial last panel of 16
    assert cpu_linear.process_weights_after_loading(layer, mode) == 1
    x = torch.randn(rows, 577)
    expected = F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer(x[None]).double(), expected[None], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_large_inputs_use_the_dense_weight_and_small_ones_the_pack(mode):
    """From LARGE_BATCH_ROWS rows on the layer runs MKL's F.linear on the dense weight (as fast
    or faster there), below it the packed copy: a pack spoiled on purpose shows which one ran."""
    layer = filled(ReplicatedLinear(64, 48, bias=True))
    cpu_linear.process_weights_after_loading(layer, mode)
    rows = cpu_linear.LARGE_BATCH_ROWS[mode]
    big, small = torch.randn(rows, 64), torch.randn(rows - 1, 64)
    expected_big = F.linear(big.double(), layer.weight.double(), layer.bias.double())
    layer.__dict__["packed_weight"] = cpu_linear._PACKERS[mode](torch.zeros_like(layer.weight))
    torch.testing.assert_close(layer(big).double(), expected_big, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer(big.view(2, rows // 2, 64)).double(),
                               expected_big.view(2, rows // 2, 48), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer(small), layer.bias.expand(rows - 1, 48))  # the zeroed pack


@pytest.mark.parametrize("mode", MODES)
def test_native_mode_unpacks(mode):
    layer = filled(LinearFactory().merged_column(64, [32, 48]))
    cpu_linear.process_weights_after_loading(layer, mode)
    assert "packed_weight" in layer.__dict__
    cpu_linear.process_weights_after_loading(layer, "native")
    assert "packed_weight" not in layer.__dict__ and "apply_linear" not in layer.__dict__
    x = torch.randn(5, 64)
    assert torch.equal(layer(x), F.linear(x, layer.weight))


@pytest.mark.parametrize("mode", MODES)
def test_a_forward_around_the_matmul_gets_the_packed_gemm(mode):
    class AllReduceLinear(ReplicatedLinear):  # like phase 4's RowParallelLinear
        def forward(self, x):
            return 2 * self.apply_linear(x)

    layer = filled(AllReduceLinear(16, 8))
    assert cpu_linear.process_weights_after_loading(layer, mode) == 1
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer(x), 2 * F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_a_layer_with_its_own_matmul_is_left_alone(mode):
    class ScaledLinear(ReplicatedLinear):
        def apply_linear(self, x, with_bias=True):
            return 2 * F.linear(x, self.weight)

    layer = filled(ScaledLinear(16, 8))
    assert cpu_linear.process_weights_after_loading(layer, mode) == 0
    x = torch.randn(3, 16)
    assert torch.equal(layer(x), 2 * F.linear(x, layer.weight))


def test_bad_mode_is_refused(monkeypatch):
    monkeypatch.setenv(cpu_linear.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="fast"):
        cpu_linear.resolve_mode()


@pytest.mark.parametrize("mode", MODES)
def test_weights_loaded_after_packing_are_used(mode):
    layer = filled(ReplicatedLinear(32, 16))
    cpu_linear.process_weights_after_loading(layer, mode)
    x = torch.randn(4, 32)
    new = torch.randn(16, 32)
    layer.weight.weight_loader(layer.weight, new)  # e.g. a tensor-parallel loader after build
    torch.testing.assert_close(layer(x), F.linear(x, new), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not extension.is_available("cpu"), reason="needs the C++ extension")
@pytest.mark.parametrize("rows,k,n", [(1, 1, 1), (6, 17, 16), (13, 64, 33), (64, 576, 960),
                                      (3, 1536, 40)])
def test_packed_linear_op_against_float64(rows, k, n):
    """The kernel itself: every row-tile size (1-6 rows), partial panels, K not a multiple of
    anything, a row-strided input (a slice of a wider tensor)."""
    torch.manual_seed(1)
    weight, wide = torch.randn(n, k), torch.randn(rows, k + 3)
    x = wide[:, 2:2 + k]
    out = torch.empty(rows, n)
    torch.ops.lightvllm.packed_linear(out, x, torch.ops.lightvllm.pack_linear_weight(weight))
    torch.testing.assert_close(out.double(), x.double() @ weight.double().t(), rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not extension.is_available("cpu"), reason="needs the C++ extension")
def test_packed_linear_refuses_a_mismatched_pack():
    packed = torch.ops.lightvllm.pack_linear_weight(torch.randn(32, 8))
    with pytest.raises(RuntimeError, match="pack_linear_weight for K = 9"):
        torch.ops.lightvllm.packed_linear(torch.empty(2, 32), torch.randn(2, 9), packed)
    with pytest.raises(RuntimeError, match="panels of 16"):
        torch.ops.lightvllm.packed_linear(torch.empty(2, 48), torch.randn(2, 8), packed)


def test_auto_picks_our_kernel_only_on_avx2(monkeypatch):
    monkeypatch.delenv(cpu_linear.ENV_VAR, raising=False)
    monkeypatch.setattr(cpu_linear, "_extension_ready", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert cpu_linear.resolve_mode() == "packed"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert cpu_linear.resolve_mode() == ("onednn" if torch.backends.mkldnn.is_available() else "native")


@pytest.mark.skipif(not extension.is_available("cpu"), reason="needs the C++ extension")
def test_packed_linear_reads_a_pack_at_any_address():
    """A pack that is a view 4 bytes into a larger buffer (not 32-byte aligned) still works."""
    torch.manual_seed(2)
    weight, x = torch.randn(40, 24), torch.randn(7, 24)
    packed = torch.ops.lightvllm.pack_linear_weight(weight)
    buffer = torch.empty(packed.numel() + 1)
    shifted = buffer[1:].view_as(packed)
    shifted.copy_(packed)
    out = torch.empty(7, 40)
    torch.ops.lightvllm.packed_linear(out, x, shifted)
    torch.testing.assert_close(out.double(), x.double() @ weight.double().t(), rtol=1e-5, atol=1e-4)
