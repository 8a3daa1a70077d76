"""oneDNN-prepacked CPU linears: same results as F.linear (float64 reference), switchable back,
layers that wrap the matmul in their own forward (phase 4's parallel layers) packed too, and
layers that replace the matmul itself left alone."""

import pytest
import torch
import torch.nn.functional as F

from phase1_kernels.layers import cpu_linear
from phase1_kernels.layers.linear import LinearFactory, ReplicatedLinear

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")


def filled(layer):
    torch.manual_seed(0)
    for p in layer.parameters():
        p.data.normal_()
    return layer


@pytest.mark.parametrize("rows", [1, 7, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_matches_float64(rows, bias):
    layer = filled(ReplicatedLinear(577, 1031, bias=bias))
    assert cpu_linear.process_weights_after_loading(layer, "onednn") == 1
    x = torch.randn(rows, 577)
    expected = F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer(x[None]).double(), expected[None], rtol=1e-4, atol=1e-4)


def test_large_inputs_use_the_dense_weight_and_small_ones_the_pack():
    """From LARGE_BATCH_ROWS rows on the layer runs MKL's F.linear on the dense weight (faster
    there), below it the packed copy: a pack spoiled on purpose shows which one ran."""
    layer = filled(ReplicatedLinear(64, 48, bias=True))
    cpu_linear.process_weights_after_loading(layer, "onednn")
    rows = cpu_linear.LARGE_BATCH_ROWS
    big, small = torch.randn(rows, 64), torch.randn(rows - 1, 64)
    expected_big = F.linear(big.double(), layer.weight.double(), layer.bias.double())
    layer.__dict__["packed_weight"] = torch.ops.mkldnn._reorder_linear_weight(
        torch.zeros_like(layer.weight), cpu_linear.PACK_BATCH_HINT)
    torch.testing.assert_close(layer(big).double(), expected_big, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer(big.view(2, rows // 2, 64)).double(),
                               expected_big.view(2, rows // 2, 48), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer(small), layer.bias.expand(rows - 1, 48))  # the zeroed pack


def test_native_mode_unpacks():
    layer = filled(LinearFactory().merged_column(64, [32, 48]))
    cpu_linear.process_weights_after_loading(layer, "onednn")
    assert "packed_weight" in layer.__dict__
    cpu_linear.process_weights_after_loading(layer, "native")
    assert "packed_weight" not in layer.__dict__ and "apply_linear" not in layer.__dict__
    x = torch.randn(5, 64)
    assert torch.equal(layer(x), F.linear(x, layer.weight))


def test_a_forward_around_the_matmul_gets_the_packed_gemm():
    class AllReduceLinear(ReplicatedLinear):  # like phase 4's RowParallelLinear
        def forward(self, x):
            return 2 * self.apply_linear(x)

    layer = filled(AllReduceLinear(16, 8))
    assert cpu_linear.process_weights_after_loading(layer, "onednn") == 1
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer(x), 2 * F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)


def test_a_layer_with_its_own_matmul_is_left_alone():
    class ScaledLinear(ReplicatedLinear):
        def apply_linear(self, x, with_bias=True):
            return 2 * F.linear(x, self.weight)

    layer = filled(ScaledLinear(16, 8))
    assert cpu_linear.process_weights_after_loading(layer, "onednn") == 0
    x = torch.randn(3, 16)
    assert torch.equal(layer(x), 2 * F.linear(x, layer.weight))


def test_bad_mode_is_refused(monkeypatch):
    monkeypatch.setenv(cpu_linear.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="fast"):
        cpu_linear.resolve_mode()


def test_weights_loaded_after_packing_are_used():
    layer = filled(ReplicatedLinear(32, 16))
    cpu_linear.process_weights_after_loading(layer, "onednn")
    x = torch.randn(4, 32)
    new = torch.randn(16, 32)
    layer.weight.weight_loader(layer.weight, new)  # e.g. a tensor-parallel loader after build
    torch.testing.assert_close(layer(x), F.linear(x, new), rtol=1e-5, atol=1e-5)
