"""Start the engine-core process: a temporary directory with its two ipc:// addresses, and
``python -m phase3_scheduling.engine_core_proc`` told to connect to them.

Standard library only, so that ``lightvllm serve`` can start the engine before it imports torch,
FastAPI and uvicorn itself: the engine process's own imports (seconds) then overlap the API
process's instead of following them. ``AsyncMPClient`` (phase 3) binds the addresses later and
sends the config; ZMQ lets the engine connect before that. Phase 3 starts its engine through
here too, so the command line has one definition.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ENGINE_CORE_MODULE = "phase3_scheduling.engine_core_proc"


@dataclass
class EngineLaunch:
    proc: subprocess.Popen
    directory: tempfile.TemporaryDirectory
    input_addr: str  # API -> engine (config, requests)
    output_addr: str  # engine -> API (ready, outputs)
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls, log_level: str = "WARNING") -> "EngineLaunch":
        directory = tempfile.TemporaryDirectory(prefix="lightvllm-")
        input_addr = f"ipc://{directory.name}/input"
        output_addr = f"ipc://{directory.name}/output"
        proc = subprocess.Popen(
            [sys.executable, "-m", ENGINE_CORE_MODULE, "--input", input_addr, "--output",
             output_addr, "--parent-pid", str(os.getpid()), "--log-level", log_level])
        return cls(proc, directory, input_addr, output_addr)

    def kill(self, timeout: float = 3.0) -> None:
        """Terminate the process (kill it after ``timeout`` s) unless it has already exited."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
