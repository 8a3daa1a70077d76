"""Shared by phase 4's executor tests: prompts and sampling settings, the in-process ``uni``
engine's tokens as the reference every other executor must reproduce."""

import pytest

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
    return {
        "greedy": [o.outputs[0].token_ids for o in greedy],
        "seeded": [o.outputs[0].token_ids for o in seeded],
        "logprobs": [[{t: (lp.logprob, lp.rank) for t, lp in step.items()}
                      for step in o.outputs[0].logprobs] for o in seeded],
    }


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for every Ray test (start-up costs seconds), bound to loopback."""
    ray = pytest.importorskip("ray", reason="the optional extra phase4-distributed[ray]")
    ray.init(num_cpus=4, _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def uni_reference(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), distributed_executor_backend="uni", **ENGINE)
    try:
        return run_prompts(llm)
    finally:
        llm.engine.shutdown()
