"""What phase 4's executor tests share: prompts and sampling settings, and the tokens (greedy,
seeded, logprobs) an engine gives for them, which every executor must reproduce exactly.
(A module, not conftest.py: several conftest modules exist, so tests cannot import from one.)"""

from __future__ import annotations

from phase3_scheduling import LLM, SamplingParams

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8, 7], list(range(20, 45)), [100]]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
SEEDED = [SamplingParams(temperature=0.8, seed=s, max_tokens=12, ignore_eos=True, logprobs=2)
          for s in range(len(PROMPTS))]
ENGINE = dict(kv_cache_gib=0.01, max_num_batched_tokens=16)  # chunked prompts mixed with decodes


def run_prompts(llm: LLM) -> dict[str, list]:
    """Greedy tokens, seeded tokens and the seeded tokens' logprobs."""
    greedy = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    seeded = llm.generate(PROMPTS, SEEDED, use_tqdm=False)
    logprobs = []
    for o in seeded:
        steps = o.outputs[0].logprobs
        assert steps is not None  # SEEDED asks for logprobs
        logprobs.append([{t: (lp.logprob, lp.rank) for t, lp in step.items()} for step in steps])
    return {
        "greedy": [o.outputs[0].token_ids for o in greedy],
        "seeded": [o.outputs[0].token_ids for o in seeded],
        "logprobs": logprobs,
    }
