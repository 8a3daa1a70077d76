"""Run a function on N local ranks as separate processes (a small ``torchrun`` for tests,
demos and notebooks): each child calls ``target(rank=r, world_size=n, master_addr=...,
master_port=..., **kwargs)``. Arguments travel as JSON on the command line; results come back
however the target writes them (files). A rank that fails or outlives ``timeout_s`` stops all
of them (by PID) and raises ``LaunchError`` with its stderr, so a broken collective never hangs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from .executors.processes import free_port

logger = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """A rank exited with an error or did not finish in time."""


def launch_local_ranks(target: str, world_size: int, kwargs: dict | None = None,
                       timeout_s: float = 120.0, master_addr: str = "127.0.0.1",
                       extra_pythonpath: Sequence[str | Path] = ()) -> None:
    """Start ``world_size`` processes running ``target`` (``"module:function"``), wait for all."""
    port = free_port(master_addr)
    env = dict(os.environ)
    paths = [str(p) for p in extra_pythonpath] + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    with tempfile.TemporaryDirectory(prefix="lightvllm-ranks-") as logs:
        procs, errs = [], []
        for rank in range(world_size):
            args = [sys.executable, "-m", __name__, target, "--rank", str(rank), "--world-size",
                    str(world_size), "--master-addr", master_addr, "--master-port", str(port),
                    "--kwargs", json.dumps(kwargs or {})]
            errs.append(Path(logs) / f"rank{rank}.stderr")
            with open(errs[-1], "w") as err:  # a file, not a pipe: a chatty rank never blocks
                procs.append(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=err))
        _wait_all(procs, errs, timeout_s, target)


def _wait_all(procs: list[subprocess.Popen], errs: list[Path], timeout_s: float,
              target: str) -> None:
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                rank = failed[0]
                raise LaunchError(f"{target}: rank {rank} exited with {codes[rank]}:\n"
                                  + errs[rank].read_text()[-4000:])
            if all(code == 0 for code in codes):
                return
            if time.monotonic() > deadline:
                running = [rank for rank, code in enumerate(codes) if code is None]
                raise LaunchError(f"{target}: ranks {running} still running after {timeout_s:.0f} s")
            time.sleep(0.05)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--master-addr", default="127.0.0.1")
    parser.add_argument("--master-port", type=int, required=True)
    parser.add_argument("--kwargs", default="{}")
    args = parser.parse_args()
    module, _, name = args.target.partition(":")
    function = getattr(importlib.import_module(module), name)
    function(rank=args.rank, world_size=args.world_size, master_addr=args.master_addr,
             master_port=args.master_port, **json.loads(args.kwargs))


if __name__ == "__main__":
    _main()
