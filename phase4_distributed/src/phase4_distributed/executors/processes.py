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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for the torch.distributed rendezvous)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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
