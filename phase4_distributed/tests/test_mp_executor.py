"""The ``mp`` executor: a worker in a subprocess gives the in-process engine's tokens; its workers
are real processes; a dead worker fails the engine within seconds; no worker outlives its engine."""

import os
import signal
import subprocess
import sys
import time

import pytest

from phase3_scheduling import LLM
from phase3_scheduling.executor import WorkerDiedError
from phase4_distributed.executors.errors import WorkerRpcError
from phase4_distributed.executors.multiproc import MultiprocExecutor

from phase4_distributed.executor_testing import ENGINE, GREEDY, PROMPTS, run_prompts


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


@pytest.fixture(scope="module")
def mp_llm(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), distributed_executor_backend="mp", **ENGINE)
    yield llm
    llm.engine.shutdown()


def test_mp_worker_gives_the_in_process_tokens(mp_llm, uni_reference):
    assert isinstance(mp_llm.engine.executor, MultiprocExecutor)
    assert run_prompts(mp_llm) == uni_reference
    assert mp_llm.engine.kv_manager.all_blocks_free


def test_workers_are_real_processes(mp_llm):
    executor = mp_llm.engine.executor
    (pid,) = executor.pids
    assert pid != os.getpid() and alive(pid)
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        assert b"phase4_distributed.executors.worker_proc" in handle.read()
    with open(f"/proc/{pid}/stat") as handle:
        assert int(handle.read().rsplit(")", 1)[1].split()[1]) == os.getpid()  # our child
    assert executor.collective_rpc("ping") == [0]
    (timings,) = executor.collective_rpc("get_timings")
    assert timings["eager_steps"] > 0  # the model work happened in that process


def test_rpc_errors_name_the_rank_and_method(mp_llm):
    with pytest.raises(WorkerRpcError, match=r"initialize_cache failed on 1 of 1 ranks: rank 0: TypeError"):
        mp_llm.engine.executor.collective_rpc("initialize_cache", ("not", "ints", "at all"))
    with pytest.raises(WorkerRpcError, match="no public method '_private'"):
        mp_llm.engine.executor.collective_rpc("_private")
    assert mp_llm.engine.executor.collective_rpc("ping") == [0]  # still in step afterwards


def test_killed_worker_fails_the_engine_within_seconds(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), distributed_executor_backend="mp", **ENGINE)
    (pid,) = llm.engine.executor.pids
    try:
        for prompt in PROMPTS:
            llm.engine.add_request(None, prompt, GREEDY.__class__(max_tokens=200, ignore_eos=True))
        llm.engine.step()
        llm.engine.step()  # mid-generation
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(WorkerDiedError, match=rf"rank 0 \(pid {pid}\) died \(signal SIGKILL\)"):
            while llm.engine.has_unfinished_requests():
                llm.engine.step()
        assert time.monotonic() - start < 10
        with pytest.raises(WorkerDiedError):  # and it stays failed
            llm.engine.step()
    finally:
        llm.engine.shutdown()
    assert not alive(pid)


ENGINE_THAT_DIES = """
import sys, time
from phase3_scheduling import LLM
llm = LLM(sys.argv[1], distributed_executor_backend="mp", kv_cache_gib=0.01)
print(*llm.engine.executor.pids, flush=True)
time.sleep(600)
"""


def test_workers_exit_when_their_engine_is_killed(tiny_llama_dir):
    engine = subprocess.Popen([sys.executable, "-c", ENGINE_THAT_DIES, str(tiny_llama_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        (worker_pid,) = map(int, engine.stdout.readline().split())
        assert alive(worker_pid)
        engine.kill()
        engine.wait()
        assert wait_gone(worker_pid, 10), f"worker {worker_pid} outlived its engine"
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
