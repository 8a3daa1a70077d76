"""The ``grpc`` executor against real ``lightvllm worker`` processes on loopback: the in-process
engine's tokens with one worker and with TP=2; a killed worker fails the engine within seconds;
``worker-health`` tells a live worker from a dead one."""

import signal
import subprocess
import time

import pytest

pytest.importorskip("grpc", reason="the optional extra phase4-distributed[grpc]")

from phase3_scheduling import LLM  # noqa: E402
from phase3_scheduling.executor import WorkerDiedError  # noqa: E402
from phase4_distributed.executors.grpc_executor import (  # noqa: E402
    GrpcExecutor, WorkerAddressError)

from phase4_distributed.executor_testing import ENGINE, GREEDY, PROMPTS, run_prompts  # noqa: E402
from phase4_distributed.grpc.local import local_workers, worker_command  # noqa: E402
from test_parallel_executors import assert_same_generation  # noqa: E402


def grpc_llm(model_dir, addresses: list[str], tp: int = 1) -> LLM:
    return LLM(str(model_dir), distributed_executor_backend="grpc", tensor_parallel_size=tp,
               extra={"worker_addresses": addresses}, **ENGINE)


@pytest.mark.parametrize("tp", [1, 2], ids=["one-worker", "tp2"])
def test_grpc_workers_give_the_in_process_tokens(tiny_llama_dir, uni_reference, tp):
    with local_workers(tp) as (addresses, procs):
        llm = grpc_llm(tiny_llama_dir, addresses, tp)
        try:
            assert isinstance(llm.engine.executor, GrpcExecutor)
            assert llm.engine.executor.collective_rpc("ping") == list(range(tp))
            assert_same_generation(run_prompts(llm), uni_reference)
        finally:
            llm.engine.shutdown()
        for proc in procs:  # the shutdown RPC ends the worker processes
            assert proc.wait(10) == 0


def test_killed_worker_fails_the_engine_quickly(tiny_llama_dir):
    with local_workers(2) as (addresses, procs):
        llm = grpc_llm(tiny_llama_dir, addresses, tp=2)
        try:
            engine = llm.engine
            for prompt in PROMPTS:
                engine.add_request(None, prompt, GREEDY, stream=False)
            engine.step()
            procs[1].send_signal(signal.SIGKILL)
            start = time.monotonic()
            with pytest.raises(WorkerDiedError, match=rf"rank 1 at {addresses[1]}"):
                while engine.has_unfinished_requests():
                    engine.step()
            assert time.monotonic() - start < 10
            with pytest.raises(WorkerDiedError):  # and it stays failed
                engine.step()
        finally:
            llm.engine.shutdown()


def test_addresses_must_match_the_world(tiny_llama_dir):
    with pytest.raises(WorkerAddressError, match="1 given .* tp x pp = 2"):
        grpc_llm(tiny_llama_dir, ["127.0.0.1:1"], tp=2)


def health(address: str) -> subprocess.CompletedProcess:
    return subprocess.run(worker_command("worker-health", "--address", address, "--timeout", "2"),
                          capture_output=True, text=True, timeout=60)


def test_worker_health_exit_codes():
    with local_workers(1) as (addresses, procs):
        alive = health(addresses[0])
        assert alive.returncode == 0, alive.stderr
        assert "rank 0/1 waiting_for_init" in alive.stdout
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(10) == 0
    dead = health(addresses[0])
    assert dead.returncode == 1
    assert "no answer within 2 s" in dead.stderr
