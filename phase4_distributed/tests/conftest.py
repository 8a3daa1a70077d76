"""Shared by phase 4's executor tests: prompts and sampling settings, the in-process ``uni``
engine's tokens as the reference every other executor must reproduce."""

import pytest

from phase3_scheduling import LLM
from phase4_distributed.executor_testing import ENGINE, run_prompts

@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance bound to loopback for one test module, shut down after it: a
    session-long cluster keeps several processes busy through every later test."""
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
