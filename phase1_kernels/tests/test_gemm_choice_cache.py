"""The small-batch GEMM choice kept on disk (``layers/gemm_choice_cache.py``): a second run reads
back the first one's picks instead of timing again, keys name what the choice depends on, and a
missing, corrupt or disabled cache only costs a measurement."""

from __future__ import annotations

import json

import pytest
import torch

from phase1_kernels.layers import gemm_choice_cache as cache
from phase1_kernels.layers import gpu_linear


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTVLLM_CACHE", str(tmp_path))
    monkeypatch.delenv(cache.ENV_VAR, raising=False)


def fake_kernels() -> list[gpu_linear.Candidate]:
    return [gpu_linear.Candidate(f"gemv{c}", 8, lambda x, w: x @ w.T) for c in (1, 2, 4)]


def test_round_trip_keeps_other_entries():
    a = cache.key("H100", "torch x", "torch.bfloat16", "tuned", (4096, 4096), (1, 2, 4))
    b = cache.key("H100", "torch x", "torch.bfloat16", "tuned", (6144, 4096), (1, 2, 4))
    cache.store(a, {1: "gemv2"}, {1: {"cublas": 15.7, "gemv2": 13.6}})
    cache.store(b, {}, {1: {"cublas": 20.6, "gemv4": 20.2}})
    assert cache.load(a) == {"picks": {"1": "gemv2"},
                             "timings_us": {"1": {"cublas": 15.7, "gemv2": 13.6}}}
    assert cache.load(b)["picks"] == {}
    assert cache.kernels_source_hash() in a and "4096x4096" in a and a != b


def test_a_recorded_choice_is_reused_without_timing(monkeypatch):
    key = ("H100", torch.bfloat16, "tuned", (4096, 4096), (1, 2, 4, 8), False)
    disk_key = gpu_linear.disk_key(key, fake_kernels())
    cache.store(disk_key, {1: "gemv2", 2: "gemv4"}, {1: {"cublas": 15.7, "gemv2": 13.6}})

    def no_timing(*args, **kwargs):
        raise AssertionError("a recorded choice must not be measured again")

    monkeypatch.setattr(gpu_linear, "_measure_shape", no_timing)
    choice = gpu_linear._recall_or_measure(key, [], fake_kernels())
    assert {b: c.label for b, c in choice.configs.items()} == {1: "gemv2", 2: "gemv4"}
    assert choice.timings_us == {1: {"cublas": 15.7, "gemv2": 13.6}}


def test_a_record_naming_an_unknown_kernel_is_measured_again(monkeypatch):
    key = ("H100", torch.bfloat16, "tuned", (4096, 4096), (1,), False)
    disk_key = gpu_linear.disk_key(key, fake_kernels())
    cache.store(disk_key, {1: "gemv8"}, {})
    fresh = gpu_linear.ShapeChoice(configs={}, timings_us={1: {"cublas": 1.0}})
    monkeypatch.setattr(gpu_linear, "_measure_shape", lambda *a, **k: fresh)
    assert gpu_linear._recall_or_measure(key, [], fake_kernels()) is fresh
    assert cache.load(disk_key)["picks"] == {}  # the new measurement replaced the record


def test_a_gate_up_measured_with_its_activation_has_its_own_record(monkeypatch):
    """gate|up timed with SiLU·mul (cuBLAS + silu_and_mul vs our fused kernel) is another
    measurement than the plain GEMM of the same shape: neither may stand in for the other."""
    plain = gpu_linear.disk_key(("H100", torch.bfloat16, "tuned", (28672, 4096), (1,), False),
                                fake_kernels())
    cache.store(plain, {}, {1: {"cublas": 79.3, "gemv4": 79.5}})
    measured = []

    def measure(weights, buckets, mode, kernels, fused_silu=False):
        measured.append(fused_silu)
        return gpu_linear.ShapeChoice(configs={1: kernels[2]}, timings_us={1: {"cublas": 82.0}})

    monkeypatch.setattr(gpu_linear, "_measure_shape", measure)
    key = ("H100", torch.bfloat16, "tuned", (28672, 4096), (1,), True)
    choice = gpu_linear._recall_or_measure(key, [], fake_kernels())
    assert measured == [True] and choice.configs[1].label == "gemv4"
    fused = gpu_linear.disk_key(key, fake_kernels())
    assert fused != plain and cache.load(fused)["picks"] == {"1": "gemv4"}
    assert cache.load(plain)["picks"] == {}  # the plain record is untouched


def test_corrupt_or_disabled_cache_costs_only_a_measurement(monkeypatch):
    cache.path().write_text("{not json")
    assert cache.load("anything") is None
    cache.store("k", {1: "gemv1"}, {})
    assert json.loads(cache.path().read_text()) == {"k": {"picks": {"1": "gemv1"}, "timings_us": {}}}
    monkeypatch.setenv(cache.ENV_VAR, "0")
    assert cache.load("k") is None
    cache.store("other", {}, {})
    assert "other" not in json.loads(cache.path().read_text())


def test_a_record_made_without_a_kernel_does_not_stand_in_for_a_choice_with_it():
    """LIGHTVLLM_MMA_LINEAR=0 measures the GEMV alone: that record must not answer a later run
    whose candidates include the tensor-core kernel (it was never timed)."""
    key = ("H100", torch.bfloat16, "tuned", (4096, 4096), (1, 2), False)
    with_mma = fake_kernels() + [gpu_linear.Candidate("mma8", 16, lambda x, w: x @ w.T)]
    assert gpu_linear.disk_key(key, fake_kernels()) != gpu_linear.disk_key(key, with_mma)


def test_a_record_timed_eagerly_does_not_stand_in_for_graph_timing(monkeypatch):
    """Eager timing counts a short GEMM's Python launch; a choice measured that way must not
    answer a run that times in CUDA graphs (and the eager key stays what earlier runs wrote)."""
    key = ("H100", torch.bfloat16, "tuned", (4096, 4096), (1, 2), False)
    monkeypatch.setenv(gpu_linear.TIMING_ENV, "eager")
    eager = gpu_linear.disk_key(key, fake_kernels())
    assert "] graph|" not in eager
    cache.store(eager, {1: "gemv1"}, {1: {"cublas": 25.0, "gemv1": 16.0}})
    monkeypatch.setenv(gpu_linear.TIMING_ENV, "GRAPH")
    graph = gpu_linear.disk_key(key, fake_kernels())
    assert graph != eager and "] graph|" in graph
    measured = []

    def measure(weights, buckets, mode, kernels, fused_silu=False):
        measured.append(gpu_linear.timing_mode())
        return gpu_linear.ShapeChoice(configs={}, timings_us={1: {"cublas": 15.5, "gemv1": 16.0}})

    monkeypatch.setattr(gpu_linear, "_measure_shape", measure)
    choice = gpu_linear._recall_or_measure(key, [], fake_kernels())
    assert measured == ["graph"] and choice.configs == {}
    assert cache.load(eager)["picks"] == {"1": "gemv1"}  # untouched


def test_an_unknown_timing_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(gpu_linear.TIMING_ENV, "wallclock")
    with pytest.raises(ValueError, match=gpu_linear.TIMING_ENV):
        gpu_linear.timing_mode()


def test_the_log_line_names_every_candidates_time(monkeypatch):
    monkeypatch.setenv(gpu_linear.TIMING_ENV, "graph")
    kernels = {k.label: k for k in fake_kernels()}
    choice = gpu_linear.ShapeChoice(
        configs={4: kernels["gemv4"]},
        timings_us={1: {"cublas": 15.5, "gemv1": 15.3}, 4: {"cublas": 15.1, "gemv1": 19.8, "gemv4": 13.4}})
    line = gpu_linear.describe({(4096, 4096): choice})
    assert line == ("graph timing; [4096x4096] M=1: cublas 15.5 -> cublas (gemv1 15.3), "
                    "M=4: cublas 15.1 -> gemv4 13.4 (gemv1 19.8)")
