"""The engine on a GPU: Triton paged attention, CUDA kernels and decode CUDA graphs must give
HF's greedy tokens (fp32), and graphs must not change anything (bf16)."""

import pytest
import torch

from phase3_scheduling import LLM, SamplingParams

pytestmark = pytest.mark.gpu

PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea,",
           "def fibonacci(n):", "1, 2, 3, 5, 8,"]


def test_gpu_engine_matches_hf_and_graphs_change_nothing(smollm2_dir):
    from transformers import AutoModelForCausalLM

    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    graphs = LLM(str(smollm2_dir), dtype="float32", max_num_seqs=8, gpu_memory_utilization=0.3)
    assert graphs.engine.info["graph_sizes"] and graphs.engine.info["backend"] == "triton_paged"
    got = [o.outputs[0].token_ids for o in graphs.generate(PROMPTS, params, use_tqdm=False)]
    tok = graphs.get_tokenizer()
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).cuda().eval()
    for prompt, tokens in zip(PROMPTS, got):
        ids = torch.tensor([tok.encode(prompt)], device="cuda")
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32,
                          min_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert ref[0, ids.shape[1]:].tolist() == tokens
    del graphs
    torch.cuda.empty_cache()
    eager = LLM(str(smollm2_dir), dtype="bfloat16", max_num_seqs=8, enforce_eager=True,
                gpu_memory_utilization=0.3)
    eager_tokens = [o.outputs[0].token_ids for o in eager.generate(PROMPTS, params, use_tqdm=False)]
    del eager
    torch.cuda.empty_cache()
    graphed = LLM(str(smollm2_dir), dtype="bfloat16", max_num_seqs=8, gpu_memory_utilization=0.3)
    assert [o.outputs[0].token_ids for o in graphed.generate(PROMPTS, params, use_tqdm=False)] == eager_tokens
