"""Shared by phase 4's executor tests: prompts and sampling settings, the in-process ``uni``
engine's tokens as the reference every other executor must reproduce."""

import pytest

from phase3_scheduling import LLM
from phase4_distributed.executor_testing import ENGINE, run_prompts

@pytest.fixture()
def ray_cluster():
    """A local Ray instance bound to loopback, shared by consecutive Ray tests (start-up costs
    seconds) and shut down as soon as the next test does not need it (it keeps several
    processes busy)."""
    ray = pytest.importorskip("ray", reason="the optional extra phase4-distributed[ray]")
    if not ray.is_initialized():
        ray.init(num_cpus=4, _node_ip_address="127.0.0.1", include_dashboard=False,
                 log_to_driver=False)
    return ray


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    if "ray_cluster" in item.fixturenames and (nextitem is None
                                               or "ray_cluster" not in nextitem.fixturenames):
        import ray

        ray.shutdown()


@pytest.fixture(scope="session")
def uni_reference(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), distributed_executor_backend="uni", **ENGINE)
    try:
        return run_prompts(llm)
    finally:
        llm.engine.shutdown()
