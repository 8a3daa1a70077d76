"""Build and load the C++/CUDA kernels (``torch.ops.lightvllm.*``) once per process.

``torch.utils.cpp_extension.load`` compiles the sources with ninja into a cache directory keyed
by the torch version, the CUDA version and a hash of the sources, so an edit rebuilds and an
unchanged tree reuses the previous build (torch's file baton serialises concurrent builds).
CPU sources are always built; CUDA sources only when this torch has CUDA and ``nvcc`` is found.
If the build fails the reason is printed once and ``is_available`` answers False, so callers fall
back to the native ops. Env ``LIGHTVLLM_NO_EXTENSION=1`` skips the build altogether.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import hashlib
import os
import platform
import shutil
import sys
import threading
from pathlib import Path
from typing import Iterator

import torch

logger = logging.getLogger(__name__)

NAME = "lightvllm_C"
CSRC = Path(__file__).resolve().parent.parent / "csrc"
# CPU code for this machine's vector units (AVX2/FMA, AVX-512 where present): the paged
# attention kernel's loops are written for the compiler to vectorise. The CPU model and these
# flags are part of the build tag, so a cache shared by different machines keeps one build each.
DEFAULT_CPU_ARCH_FLAGS = "-march=native"
DEFAULT_CUDA_ARCH_FLAGS = (
    "-gencode=arch=compute_90,code=sm_90 -gencode=arch=compute_90,code=compute_90"
)

_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "ok": False, "cuda": False, "error": None}


def _sources() -> tuple[list[Path], list[Path]]:
    cpu = [CSRC / "torch_bindings.cpp", *sorted((CSRC / "cpu").glob("*.cpp"))]
    cuda = sorted((CSRC / "cuda").glob("*.cu"))
    return cpu, cuda


def find_nvcc() -> str | None:
    """Path of ``nvcc`` from ``CUDA_HOME``/``CUDA_PATH`` or PATH, else None."""
    for env in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(env)
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _cuda_home_for(nvcc: str) -> str:
    return os.environ.get("CUDA_HOME") or str(Path(nvcc).resolve().parent.parent)


def _cpu_model() -> str:
    """The first CPU's model name and feature flags (what ``-march=native`` compiles for)."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return "|".join(line for line in first if line.startswith(("model name", "flags")))


def _build_tag(files: list[Path], with_cuda: bool, cuda_flags: str, cpu_flags: str = "") -> str:
    h = hashlib.sha256()
    h.update(f"{cpu_flags}|{_cpu_model() if cpu_flags else ''}".encode())
    for f in sorted(CSRC.rglob("*")):  # every source and header under csrc/
        if f.is_file() and f.suffix in {".cpp", ".cu", ".h", ".cuh"}:
            h.update(str(f.relative_to(CSRC)).encode())
            h.update(f.read_bytes())
    if with_cuda:
        h.update(cuda_flags.encode())
    cuda = f"cu{torch.version.cuda}" if with_cuda else "cpu"
    return f"torch{torch.__version__}-{cuda}-{h.hexdigest()[:16]}".replace("+", "_")


def load(verbose: bool = False) -> bool:
    """Build (or reuse) and load the extension; True if ``torch.ops.lightvllm`` is usable."""
    if _state["tried"]:
        return bool(_state["ok"])
    with _lock:
        if _state["tried"]:
            return bool(_state["ok"])
        try:
            _build_and_load(verbose)
            _state["ok"] = True
        except Exception as exc:  # noqa: BLE001 - any build failure means: fall back to native
            reason = str(exc).strip().splitlines()
            _state["error"] = f"{type(exc).__name__}: {reason[-1] if reason else exc}"
            print(f"[lightvllm] C++/CUDA kernels unavailable, using native ops: {_state['error']}",
                  file=sys.stderr, flush=True)
        _state["tried"] = True
    return bool(_state["ok"])


def _build_and_load(verbose: bool) -> None:
    if os.environ.get("LIGHTVLLM_NO_EXTENSION", "") not in ("", "0"):
        raise RuntimeError("disabled by LIGHTVLLM_NO_EXTENSION")
    from torch.utils import cpp_extension

    from shared.paths import cache_dir

    cpu_src, cuda_src = _sources()
    nvcc = find_nvcc() if torch.version.cuda else None
    with_cuda = bool(cuda_src) and nvcc is not None
    cuda_flags = os.environ.get("LIGHTVLLM_CUDA_ARCH_FLAGS", DEFAULT_CUDA_ARCH_FLAGS)
    cpu_flags = os.environ.get("LIGHTVLLM_CPU_ARCH_FLAGS", DEFAULT_CPU_ARCH_FLAGS)
    if with_cuda:
        assert nvcc is not None  # with_cuda implies it
        os.environ.setdefault("CUDA_HOME", _cuda_home_for(nvcc))
    sources = cpu_src + (cuda_src if with_cuda else [])
    build_dir = cache_dir("torch_extensions", _build_tag(sources, with_cuda, cuda_flags, cpu_flags))
    with _exclusive_build(build_dir):
        _load(cpp_extension, sources, build_dir, cpu_flags, cuda_flags, with_cuda, verbose)


@contextlib.contextmanager
def _exclusive_build(build_dir: Path) -> Iterator[None]:
    """One build per directory at a time, with a lock the kernel drops when its holder dies.
    torch's own baton (a ``lock`` file) is left behind by a build that was killed, and every
    later process then waits on it forever; holding our flock proves that file is stale."""
    with open(build_dir / "lightvllm.flock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        baton = build_dir / "lock"
        if baton.exists():
            logger.warning("removing %s, left by a build that did not finish", baton)
            baton.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load(cpp_extension, sources: list[Path], build_dir: Path, cpu_flags: str, cuda_flags: str,
          with_cuda: bool, verbose: bool) -> None:
    cpp_extension.load(
        name=NAME,
        sources=[str(s) for s in sources],
        build_directory=str(build_dir),
        # -fopenmp: at::parallel_for is an inline OpenMP region; without it every CPU kernel
        # runs on one thread. Compile-only: the runtime is torch's own libgomp, already loaded.
        # No -std here: cpp_extension passes the standard its own headers need (C++17 in torch
        # 2.11, C++20 in 2.13, whose headers use C++20 features).
        extra_cflags=["-O3", "-fopenmp", *cpu_flags.split()],
        extra_cuda_cflags=["-O3", *cuda_flags.split()],
        extra_include_paths=[str(CSRC)],
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=verbose,
    )
    _state["cuda"] = with_cuda
    from . import compiled

    compiled.register_fakes()


def is_available(device: torch.device | str = "cpu") -> bool:
    """CPU kernels for cpu devices, CUDA kernels (if they were compiled) for cuda devices."""
    device = torch.device(device)
    if device.type not in ("cpu", "cuda") or not load():
        return False
    return device.type == "cpu" or bool(_state["cuda"])


def why_unavailable(device: torch.device | str = "cpu") -> str:
    """Empty string if available on ``device``, else the reason."""
    device = torch.device(device)
    if is_available(device):
        return ""
    if device.type not in ("cpu", "cuda"):
        return f"no lightvllm kernels for device type {device.type!r}"
    if not _state["ok"]:
        return f"the extension did not build or load: {_state['error']}"
    if not torch.version.cuda:
        return "this torch build has no CUDA, so the CUDA kernels were not built"
    return "nvcc was not found (set CUDA_HOME or put nvcc on PATH), so the CUDA kernels were not built"
