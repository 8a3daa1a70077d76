"""``lightvllm worker`` processes on free loopback ports of this host (for tests, benchmarks and
trying the grpc executor without a cluster), stopped by PID when the context ends."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc

from phase1_kernels.cpu_threads import restore_process_affinity

from ..executors.processes import cpu_worker_env, free_ports, stop_processes
from .health import probe

STARTUP_S = 60.0


def worker_command(*args: str) -> list[str]:
    """``lightvllm ARGS`` run by this interpreter (no installed script needed)."""
    return [sys.executable, "-c", "from lightvllm.cli import main; main()", *args]


def wait_healthy(address: str, proc: subprocess.Popen, timeout_s: float = STARTUP_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"worker at {address} exited with code {proc.returncode}")
        try:
            probe(address, 1.0)
            return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextlib.contextmanager
def local_workers(world_size: int) -> Iterator[tuple[list[str], list[subprocess.Popen]]]:
    """``world_size`` workers (one torch.distributed world); their addresses and processes.
    They share this host, so each gets its share of the cores if it runs on the CPU."""
    master_port, *ports = free_ports(world_size + 1)
    procs: list[subprocess.Popen] = []
    try:
        for rank, port in enumerate(ports):
            procs.append(subprocess.Popen(worker_command(
                "worker", "--rank", str(rank), "--world-size", str(world_size),
                "--master", "127.0.0.1", "--master-port", str(master_port),
                "--host", "127.0.0.1", "--port", str(port)),
                env={**os.environ, **cpu_worker_env(rank, world_size)},
                preexec_fn=restore_process_affinity))
        addresses = [f"127.0.0.1:{port}" for port in ports]
        for address, proc in zip(addresses, procs):
            wait_healthy(address, proc)
        yield addresses, procs
    finally:
        stop_processes(procs)
