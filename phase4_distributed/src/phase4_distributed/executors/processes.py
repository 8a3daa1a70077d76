"""Worker processes by PID: start them, tell how one ended, stop them (terminate, then kill),
and let a worker notice that its engine is gone so that none outlives it."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time

logger = logging.getLogger(__name__)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that nobody listens on right now. Every socket stays bound
    until all are picked: ports taken one after another can repeat (the kernel may hand the port
    it just got back out again), and a rendezvous port that equals a worker's gRPC port makes the
    rank that listens there fail with EADDRINUSE and the others talk to the wrong server."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for the torch.distributed rendezvous)."""
    return free_ports(1, host)[0]


def cpu_share(rank: int, ranks_on_host: int) -> str:
    """The cores rank ``rank`` of ``ranks_on_host`` co-located CPU workers runs on, as a
    ``LIGHTVLLM_CPU_BIND`` list: a contiguous 1/n of this process's cores each (with more ranks
    than cores, one core each, round robin). Without it every worker would size its OpenMP pool
    to all cores and pin thread i to core i, so that the ranks' threads fight over the same cores."""
    from phase1_kernels.cpu_threads import usable_cpus

    cpus = usable_cpus()
    if ranks_on_host >= len(cpus):
        mine = [cpus[rank % len(cpus)]]
    else:
        per_rank = len(cpus) // ranks_on_host
        mine = cpus[rank * per_rank:(rank + 1) * per_rank]
    return ",".join(f"{c}-{c}" for c in mine)  # "N-N": a bare "0" or "1" means off / auto


def cpu_worker_env(rank: int, ranks_on_host: int) -> dict[str, str]:
    """Environment for a co-located CPU worker: its share of the cores, unless the user chose
    the binding (``LIGHTVLLM_CPU_BIND`` already set)."""
    from phase1_kernels.cpu_threads import BIND_ENV

    if os.environ.get(BIND_ENV):
        return {}
    return {BIND_ENV: cpu_share(rank, ranks_on_host)}


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def stop_processes(procs: list[subprocess.Popen], timeout_s: float = 5.0) -> None:
    """SIGTERM every live process, wait up to ``timeout_s`` in all, SIGKILL those still alive."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("worker pid %d ignored SIGTERM for %.0f s: killing it", proc.pid,
                           timeout_s)
            proc.kill()
            proc.wait()


def exit_when_parent_dies(parent_pid: int, interval_s: float = 0.5) -> threading.Thread:
    """A daemon thread that ends this process once ``parent_pid`` is no longer its parent
    (the engine died, even by SIGKILL, and the worker was re-parented)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        logger.error("engine process %d is gone: worker pid %d exits", parent_pid, os.getpid())
        os._exit(1)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread
