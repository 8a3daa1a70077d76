"""Tensor- and pipeline-parallel engines (workers in subprocesses or Ray actors, gloo on the CPU)
give the single-worker engine's tokens on the fixture checkpoint (4 heads, 2 KV heads)."""

import pytest

pytest.importorskip("phase4_distributed.model_loader", reason="needs the TP/PP layers")

from phase1_kernels.cpu_threads import usable_cpus  # noqa: E402
from phase3_scheduling import LLM  # noqa: E402

from phase4_distributed.executor_testing import ENGINE, run_prompts  # noqa: E402


def assert_same_generation(got, want, tol=1e-4):
    """Equal tokens; logprobs equal up to float32 summation order (shards sum in another order)."""
    assert got["greedy"] == want["greedy"]
    assert got["seeded"] == want["seeded"]
    for got_req, want_req in zip(got["logprobs"], want["logprobs"], strict=True):
        for got_step, want_step in zip(got_req, want_req, strict=True):
            assert got_step.keys() == want_step.keys()
            for token, (logprob, _) in got_step.items():
                assert logprob == pytest.approx(want_step[token][0], abs=tol)


def worker_env(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as handle:
        pairs = [item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item]
    return {k.decode(): v.decode() for k, v in pairs}


@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2), (2, 2)], ids=["tp2", "pp2", "tp2xpp2"])
def test_mp_parallel_equals_one_worker(tiny_llama_dir, uni_reference, tp, pp):
    llm = LLM(str(tiny_llama_dir), tensor_parallel_size=tp, pipeline_parallel_size=pp,
              distributed_executor_backend="mp", **ENGINE)
    try:
        pids = llm.engine.executor.pids
        assert len(pids) == tp * pp
        binds = {worker_env(pid).get("LIGHTVLLM_CPU_BIND") for pid in pids}
        assert len(binds) == min(tp * pp, len(usable_cpus()))  # each rank its own core(s)
        assert_same_generation(run_prompts(llm), uni_reference)
        assert llm.engine.core.peak_in_flight == pp  # PP stages ran different micro-batches
    finally:
        llm.engine.shutdown()


@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_ray_parallel_equals_one_worker(ray_cluster, tiny_llama_dir, uni_reference, tp, pp):
    llm = LLM(str(tiny_llama_dir), tensor_parallel_size=tp, pipeline_parallel_size=pp,
              distributed_executor_backend="ray", **ENGINE)
    try:
        assert len(llm.engine.executor.pids) == tp * pp
        assert_same_generation(run_prompts(llm), uni_reference)
        assert llm.engine.core.peak_in_flight == pp
    finally:
        llm.engine.shutdown()
