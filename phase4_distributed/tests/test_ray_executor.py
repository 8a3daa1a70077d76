"""The ``ray`` executor: actors in a placement group give the in-process engine's tokens, and a
dead actor fails the engine with ``WorkerDiedError``."""

import os
import signal
import time

import pytest

ray = pytest.importorskip("ray", reason="the optional extra phase4-distributed[ray]")

from phase3_scheduling import LLM, SamplingParams  # noqa: E402
from phase3_scheduling.executor import WorkerDiedError  # noqa: E402
from phase4_distributed.executors.ray_executor import RayExecutor  # noqa: E402

from phase4_distributed.executor_testing import ENGINE, PROMPTS, run_prompts  # noqa: E402


@pytest.fixture(scope="module")
def ray_llm(ray_cluster, tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), distributed_executor_backend="ray", **ENGINE)
    yield llm
    llm.engine.shutdown()


def test_ray_actor_gives_the_in_process_tokens(ray_llm, uni_reference):
    executor = ray_llm.engine.executor
    assert isinstance(executor, RayExecutor)
    assert executor.pids[0] != os.getpid()
    assert ray.util.placement_group_table(executor.placement_group)["bundles"] == {0: {"CPU": 1.0}}
    got = run_prompts(ray_llm)
    assert got["greedy"] == uni_reference["greedy"]
    assert got["seeded"] == uni_reference["seeded"]
    assert_logprobs_close(got["logprobs"], uni_reference["logprobs"])


def assert_logprobs_close(got, want, tol=1e-5):
    """Same top tokens and ranks; values equal up to float32 summation order (Ray gives a
    1-CPU actor one torch thread, the reference engine ran with this process's threads)."""
    for got_req, want_req in zip(got, want, strict=True):
        for got_step, want_step in zip(got_req, want_req, strict=True):
            assert got_step.keys() == want_step.keys()
            for token, (logprob, rank) in got_step.items():
                assert rank == want_step[token][1]
                assert logprob == pytest.approx(want_step[token][0], abs=tol)


def test_dead_actor_fails_the_engine(ray_cluster, tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), distributed_executor_backend="ray", **ENGINE)
    try:
        for prompt in PROMPTS:
            llm.engine.add_request(None, prompt, SamplingParams(max_tokens=200, ignore_eos=True))
        llm.engine.step()
        os.kill(llm.engine.executor.pids[0], signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(WorkerDiedError, match="Ray worker actor died"):
            while llm.engine.has_unfinished_requests():
                llm.engine.step()
        assert time.monotonic() - start < 10
    finally:
        llm.engine.shutdown()
