"""Small helpers for the local control plane and DNS server: free ports, started processes
stopped by PID, and waiting for readiness."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..executors.processes import free_port

logger = logging.getLogger(__name__)


class ComponentFailed(RuntimeError):
    """A local component exited or did not become ready in time."""


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (DNS serves both)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ComponentFailed("no port free for both UDP and TCP on 127.0.0.1 after 50 tries")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the starting process dies (Linux ``prctl``), so a
    killed test run or operator host leaves no control plane behind."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start(name: str, argv: Sequence[str], log_dir: Path,
          env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``argv`` in its own process group with stdout+stderr in ``log_dir/name.log``; it
    ends with the process that started it."""
    log_dir.mkdir(parents=True, exist_ok=True)
    logger.info("starting %s: %s", name, " ".join(argv))
    with open(log_dir / f"{name}.log", "wb") as log:
        return subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                start_new_session=True, preexec_fn=_die_with_parent)


def stop(proc: subprocess.Popen, name: str, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group this module started (by its PID), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout_s)
            return
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) ignored %s", name, proc.pid, sig.name)


def log_tail(log_dir: Path, name: str, lines: int = 20) -> str:
    path = log_dir / f"{name}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, name: str, log_dir: Path,
               timeout_s: float) -> None:
    """Poll ``ready()`` until true; fail early (with the log's tail) if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ComponentFailed(f"{name} exited with {proc.returncode}:\n{log_tail(log_dir, name)}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise ComponentFailed(f"{name} not ready within {timeout_s:.0f} s:\n{log_tail(log_dir, name)}")
