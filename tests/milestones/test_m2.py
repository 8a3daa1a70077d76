"""Milestone 2 of the roadmap (Attention 최적화), item by item."""

import json
import time
from pathlib import Path

import pytest
import torch

import phase2_attention  # noqa: F401  (registers the phase-2 backends by name)
from phase1_kernels import LightvLLM, LlamaForCausalLM
from phase1_kernels.layers.attention import get_backend, registered_backends
from phase2_attention import CacheConfig, PagedGenerator
from phase2_attention.backends import flash_attn_available
from phase2_attention.ops import triton_paged

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results" / "h100_attention.json"
FA4_RESULTS = RESULTS.with_name("h200_fa4_attention.json")
FA4_LOG = RESULTS.with_name("h200_fa4_tests_log.txt")


def test_flash_attention_integrated(smollm2_dir):
    """[ ] Flash Attention 통합 — the flash_attn backend is selectable by name (or says clearly why
    not), and SDPA, which runs FlashAttention kernels on the GPU, gives the naive logits on the
    real model."""
    assert "flash_attn" in registered_backends()
    if flash_attn_available():
        assert get_backend("flash_attn").name == "flash_attn"
    else:
        with pytest.raises(RuntimeError, match="flash_attn backend unavailable"):
            get_backend("flash_attn")

    naive = LightvLLM.from_pretrained(smollm2_dir, device="cpu")
    sdpa = LightvLLM.from_pretrained(smollm2_dir, device="cpu", attn_backend="sdpa")
    assert sdpa.model.attention_layers[0].backend.name == "sdpa"
    ids = torch.tensor([naive.tokenizer.encode("The capital of France is")[:5],
                        naive.tokenizer.encode("Paged attention stores the KV cache")[:5]])
    expected, got = naive(ids).logits, sdpa(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (got[:, -1].argmax(-1) == expected[:, -1].argmax(-1)).all()


def _greedy_with(model_dir, backend: str, prompts, n: int):
    llm = LightvLLM.from_pretrained(model_dir, device="cpu", attn_backend=backend)
    assert type(llm.model) is LlamaForCausalLM  # one model definition for every backend
    assert {layer.backend.name for layer in llm.model.attention_layers} == {backend}
    if backend == "naive":
        return llm.generate(prompts, max_new_tokens=n, stop_token_ids=[])
    gen = PagedGenerator(llm, CacheConfig(num_blocks=24, block_size=16))
    out = gen.generate(prompts, max_new_tokens=n)
    assert gen.manager.num_free_blocks == gen.num_blocks - 1
    return out


def test_backend_abstraction_layer(tiny_llama_dir):
    """[ ] 백엔드 추상화 레이어 구현 — every registered backend runs the same LlamaForCausalLM, picked
    by name with no code change, and gives the same greedy tokens."""
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3], [5], [2, 7, 1, 8]]
    expected = _greedy_with(tiny_llama_dir, "naive", prompts, 6)
    runnable = []
    for name in registered_backends():
        if name == "flash_attn":  # CUDA-only kernels; these models run on the CPU (its GPU
            continue              # test: phase2_attention/tests/test_flash_attn_gpu.py)
        if name == "triton_paged" and not triton_paged.is_available("cpu"):
            continue
        runnable.append(name)
    assert {"naive", "sdpa", "torch_paged"} <= set(runnable)
    for name in runnable:
        assert _greedy_with(tiny_llama_dir, name, prompts, 6) == expected, name
    with pytest.raises(ValueError, match="unknown attention backend"):
        get_backend("no_such_backend")


def _largest_common(rows, kind, fast, size_key):
    """(fast row, naive row) at the largest (batch, size) where both were measured."""
    def index(impl):
        return {(r["batch"], r[size_key]): r for r in rows if r["kind"] == kind and r["impl"] == impl}

    fast_rows, naive_rows = index(fast), index("naive")
    common = sorted(set(fast_rows) & set(naive_rows), key=lambda k: (k[0] * k[1], k))
    assert common, f"no {kind} shape measured for both {fast} and naive"
    return fast_rows[common[-1]], naive_rows[common[-1]]


def test_flash_vs_naive_performance_compared(tiny_llama_dir):
    """[ ] Flash vs Naive 성능 비교 — the H100 comparison is recorded (docs/results/h100_attention.json)
    and SDPA (flash) beats naive at the largest shape both ran; on the CPU we only check that the
    same comparison runs and is timed (no speed claim: the interpreter/CPU say nothing about GPUs)."""
    data = json.loads(RESULTS.read_text())
    assert "H100" in data["device"]
    rows = data["rows"]
    sdpa, naive = _largest_common(rows, "prefill", "sdpa flash", "seq")
    assert sdpa["us"] < naive["us"], (sdpa, naive)
    assert naive["seq"] >= 4096
    sdpa, naive = _largest_common(rows, "decode", "sdpa", "ctx")
    assert sdpa["graph_us"] < naive["graph_us"], (sdpa, naive)
    assert naive["extra_mb"] > 100 * sdpa["extra_mb"]  # naive materialises the score matrix

    ids = torch.randint(0, 320, (2, 64))
    timings = {}
    for backend in ("naive", "sdpa"):
        llm = LightvLLM.from_pretrained(tiny_llama_dir, device="cpu", attn_backend=backend)
        llm(ids)  # warm-up
        start = time.perf_counter()
        logits = llm(ids).logits
        timings[backend] = time.perf_counter() - start
        assert torch.isfinite(logits).all()
    assert all(t > 0 for t in timings.values())


def test_flash_attention_4_recorded_on_the_gpu():
    """FlashAttention 4 (the flash_attn backend) ran on the H200: the recorded log shows its GPU
    tests passing (vs float64, SDPA, Triton; CUDA graphs; the engine on the B2 prompt), and the
    recorded benchmark holds FA4 rows at both page paths for every shape of issue 13, next to the
    Triton kernel's row of the same run."""
    log = FA4_LOG.read_text()
    assert "14 passed" in log and "2 passed" in log and "failed" not in log
    data = json.loads(FA4_RESULTS.read_text())
    assert "H200" in data["device"] and data["flash_attn"] == 4
    measured = {(r["kind"], r["impl"], r["batch"], r.get("ctx", r.get("seq"))) for r in data["rows"]}
    for kind, batch, size in [("decode", 64, 4096), ("decode", 8, 32768),
                              ("prefill", 1, 4096), ("prefill", 1, 16384)]:
        for impl in ("triton paged", "flash-attn4 bs16", "flash-attn4 bs128"):
            assert (kind, impl, batch, size) in measured, (kind, impl, batch, size)
