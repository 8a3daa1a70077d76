"""The compile-ahead pass (``worker/compile_ahead.py``) must compile every Triton kernel variant
that the warm-up and the decode-graph capture launch, so that they compile nothing more, and the
kernels it compiled must give the tokens of kernels compiled at their first launch. Each engine
starts in a fresh process with an empty Triton cache (in one pytest process the kernels that
earlier tests compiled would already be cached in memory)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from shared.fixtures import write_random_llama

pytestmark = pytest.mark.gpu

SHAPE = dict(vocab_size=2048, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024)

CHILD = r"""
import json, sys
from triton.runtime.jit import JITFunction
from phase1_kernels.ops import skinny_gemm, triton_ops
from phase2_attention.ops import rope_store, triton_paged
import phase3_scheduling.worker.model_runner as model_runner
from phase3_scheduling import LLM, SamplingParams

def compiled_variants():
    modules = (skinny_gemm, triton_ops, rope_store, triton_paged)
    kernels = [k for m in modules for k in vars(m).values() if isinstance(k, JITFunction)]
    return sum(len(caches[0]) for k in kernels for caches in k.device_caches.values())

counts = {}
ahead = model_runner.compile_start_up_kernels

def counting(runner, capture_decode):
    result = ahead(runner, capture_decode)
    counts["after_ahead"] = compiled_variants()
    counts["ahead_variants"] = None if result is None else result.variants
    return result

model_runner.compile_start_up_kernels = counting
llm = LLM(sys.argv[1], dtype="bfloat16", max_num_seqs=32, num_gpu_blocks_override=512)
counts["after_start"] = compiled_variants()
prompts = [[(7 * i + j) % 2048 for j in range(n)] for i, n in enumerate((5, 37, 100, 16, 1))]
params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
tokens = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
print("RESULT" + json.dumps({"counts": counts, "tokens": tokens}))
"""


def start_engine(path, cache_dir, ahead: bool) -> dict:
    env = dict(os.environ, TRITON_CACHE_DIR=str(cache_dir),
               LIGHTVLLM_COMPILE_AHEAD="1" if ahead else "0")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compile_ahead_leaves_nothing_for_warm_up_and_capture(tmp_path):
    path = write_random_llama(tmp_path, std=0.05, **SHAPE)
    ahead = start_engine(path, tmp_path / "cache_ahead", ahead=True)
    first_launch = start_engine(path, tmp_path / "cache_first_launch", ahead=False)
    counts = ahead["counts"]
    print("with compile-ahead:", counts, "without:", first_launch["counts"])
    if counts["ahead_variants"] is None:
        pytest.skip("this Triton has no AsyncCompileMode: the pass is skipped")
    assert counts["ahead_variants"] > 0
    assert counts["after_start"] == counts["after_ahead"]  # warm-up and capture compiled nothing
    # without the pass the warm-up and capture compile at least the same variants themselves
    assert first_launch["counts"]["after_start"] >= counts["after_ahead"]
    assert ahead["tokens"] == first_launch["tokens"]
