"""The workload floor's arithmetic against a hand count on a tiny model and two requests."""

from __future__ import annotations

import pytest


def test_floor_of_two_requests_by_hand(benchmark_script):
    floor_mod = benchmark_script("workload_floor")
    # 1 layer, hidden 4, intermediate 8, 2 heads of 2 (1 KV head), vocab 10
    shape = floor_mod.Shape(layers=1, hidden=4, intermediate=8, heads=2, kv_heads=1, head_dim=2,
                            vocab=10, tied=False)
    # qkv 4x(4+2+2)=32, o 4x4=16, gate|up+down 3x4x8=96: 144 matmul weights a layer
    assert shape.layer_matmul_params == 144
    assert shape.step_weight_bytes == 2 * (144 + 2 * 4 + 4 + 10 * 4)  # + 2 norms, final norm, head
    assert shape.kv_bytes_per_token == 1 * 2 * 1 * 2 * 2
    prompts, outputs = [3, 5], [2, 4]
    # prefill: 2·144·8 tokens + head 2·10·4 per prompt + attention 2·l²·2·2 per prompt
    flops = 2 * 144 * 8 + 2 * (2 * 10 * 4) + (2 * 9 * 4 + 2 * 25 * 4)
    assert floor_mod.prefill_flops(shape, prompts) == flops
    f = floor_mod.workload_floor(shape, prompts, outputs, bandwidth_gbs=1e-9, tflops=1e-12)
    # decode steps s = 1, 2, 3: request 0 (2 outputs) runs at s = 1 with 3 + 1 tokens of context;
    # request 1 at s = 1, 2, 3 with 6, 7, 8
    assert f.decode_steps == 3 and f.output_tokens == 6
    assert f.prefill_s == pytest.approx(flops)
    assert f.decode_weights_s == pytest.approx(3 * shape.step_weight_bytes)
    assert f.decode_kv_s == pytest.approx((4 + 6 + 7 + 8) * shape.kv_bytes_per_token)
    assert f.output_tok_s == pytest.approx(6 / f.total_s)


def test_b3_floor_on_the_h200_figures(benchmark_script):
    """B3 at 4.3 TB/s and 989 TFLOP/s: ~9.6 s; the prints name each part."""
    result = benchmark_script("workload_floor").main(["--measured-s", "14.4"])
    assert result["decode_steps"] == 1021 and result["output_tokens"] == 149611
    assert 9.0 < result["total_s"] < 10.5 and 0.6 < result["share_of_floor"] < 0.7
