"""The prefill step profile (phase3_scheduling/benchmarks/prefill_step_profile.py) in its tiny CPU
form: one step prefills every prompt, each family gets its time, and the FLOPs it charges are the
model's shapes worked out by hand."""

from __future__ import annotations

import pytest


def test_tiny_profile_times_every_gemm_family_and_counts_their_flops(benchmark_script, capsys,
                                                                   tmp_path):
    script = benchmark_script("prefill_step_profile")
    result = script.main(["--tiny", "--out", str(tmp_path / "prefill.json")])
    table = capsys.readouterr().out
    rows = {r["family"]: r for r in result["rows"]}
    for family in ("qkv", "o", "gate_up", "down", "lm_head", "attention", "gemms", "total"):
        assert f"| {family} |" in table, f"no row for {family}"
    for family in ("qkv", "o", "gate_up", "down", "lm_head", "attention", "rms_norm"):
        assert rows[family]["us_per_step"] > 0, family
    assert result["step_ms"] > 0 and result["ceiling_tflops"] > 0
    # the tiny config (2 layers, hidden 64, 4 heads of 16, 2 KV heads, intermediate 128,
    # vocab 512): 256 tokens in 4 prompts of 64
    T, P, n, L, H, F, V, q, kv = 256, 4, 64, 2, 64, 128, 512, 64, 32
    expected = {"qkv": 2 * T * L * H * (q + 2 * kv), "o": 2 * T * L * q * H,
                "gate_up": 2 * T * L * H * 2 * F, "down": 2 * T * L * F * H,
                "lm_head": 2 * P * H * V, "attention": P * L * 2 * n * n * q}
    for family, flops in expected.items():
        assert rows[family]["tflop"] * 1e12 == pytest.approx(flops), family
    gemm_us = sum(rows[f]["us_per_step"] for f in ("qkv", "o", "gate_up", "down", "lm_head"))
    assert rows["gemms"]["us_per_step"] == pytest.approx(gemm_us)
    assert (tmp_path / "prefill.json").is_file()


def test_a_step_too_small_for_the_prompts_is_an_error(benchmark_script):
    script = benchmark_script("prefill_step_profile")
    with pytest.raises(SystemExit):
        script.parse_args(["--tiny", "--tokens", "250", "--prompts", "4"])


def test_steps_are_synchronous_so_one_step_ends_its_prompts(benchmark_script):
    """With async scheduling (the GPU default) a step's tokens are processed by the next step, and
    the profiled step would not end its prompts: the profile asks for synchronous steps."""
    script = benchmark_script("prefill_step_profile")
    assert script.parse_args(["--tiny"]).async_scheduling is False
