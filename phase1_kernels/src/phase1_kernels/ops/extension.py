"""Build and load the C++/CUDA kernels (``torch.ops.lightvllm.*``) once per process.

``torch.utils.cpp_extension.load`` compiles the sources with ninja into a cache directory keyed
by the torch version, the CUDA version and a hash of the sources, so an edit rebuilds and an
unchanged tree reuses the previous build (our flock, then torch's own lock, serialise builds).
CPU sources are always built; CUDA sources only when this torch has CUDA, a GPU is visible and
``nvcc`` is found (a CUDA build of torch on a machine with no GPU builds the CPU kernels alone).
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
TOOLKIT_DIRS = (Path("/usr/local/cuda"),)  # where a CUDA toolkit usually lies, after nvcc's own
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
    """``CUDA_HOME`` if set, else the toolkit directory that holds ``nvcc``'s runtime library:
    ``nvcc`` on PATH may be a wrapper script (``/usr/local/bin/nvcc`` running
    ``/usr/local/cuda-13.0/bin/nvcc``), whose parent has no ``libcudart`` to link against."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    candidates = [Path(nvcc).resolve().parent.parent, *TOOLKIT_DIRS]
    for home in candidates:
        if any((home / lib / "libcudart.so").exists() for lib in ("lib64", "lib")):
            return str(home)
    return str(candidates[0])


def _import_builder(quiet: bool):
    """``torch.utils.cpp_extension``; ``quiet``: without its import-time warning that no CUDA
    runtime is found (said on every machine with ``nvcc`` and no GPU, where we build for the CPU
    alone: nothing for a user to act on)."""
    builder_log = logging.getLogger("torch.utils.cpp_extension")
    level = builder_log.level
    if quiet:
        builder_log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        builder_log.setLevel(level)
    return cpp_extension


def _use_cuda_home(home: str) -> None:
    """Tell torch's extension builder where the toolkit is. It reads ``CUDA_HOME`` once, when
    ``torch.utils.cpp_extension`` is first imported (else from ``nvcc``'s parent directory, the
    wrapper's); if something imported it already, its module-level copy is set as well."""
    os.environ.setdefault("CUDA_HOME", home)
    builder = sys.modules.get("torch.utils.cpp_extension")
    if builder is not None and getattr(builder, "CUDA_HOME", None) != os.environ["CUDA_HOME"]:
        setattr(builder, "CUDA_HOME", os.environ["CUDA_HOME"])  # mypy: a typed module


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
    from shared.paths import cache_dir

    cpu_src, cuda_src = _sources()
    nvcc = find_nvcc() if torch.version.cuda and torch.cuda.is_available() else None
    with_cuda = bool(cuda_src) and nvcc is not None
    cuda_flags = os.environ.get("LIGHTVLLM_CUDA_ARCH_FLAGS", DEFAULT_CUDA_ARCH_FLAGS)
    cpu_flags = os.environ.get("LIGHTVLLM_CPU_ARCH_FLAGS", DEFAULT_CPU_ARCH_FLAGS)
    if with_cuda:
        assert nvcc is not None  # with_cuda implies it
        _use_cuda_home(_cuda_home_for(nvcc))
    cpp_extension = _import_builder(quiet=not with_cuda)

    sources = cpu_src + (cuda_src if with_cuda else [])
    build_dir = cache_dir("torch_extensions", _build_tag(sources, with_cuda, cuda_flags, cpu_flags))
    with _exclusive_build(build_dir, stale_baton=_baton_is_a_file(cpp_extension)):
        _load(cpp_extension, sources, build_dir, cpu_flags, cuda_flags, with_cuda, verbose)


def _baton_is_a_file(cpp_extension) -> bool:
    """Whether this torch's builder waits while its ``lock`` file merely exists (``FileBaton``,
    torch 2.13 and older) rather than on an advisory lock held in it (torch 2.14: the file stays
    after every build, and only a live holder blocks)."""
    return hasattr(cpp_extension, "FileBaton")


@contextlib.contextmanager
def _exclusive_build(build_dir: Path, stale_baton: bool = True) -> Iterator[None]:
    """One build per directory at a time, with a lock the kernel drops when its holder dies.
    With ``stale_baton`` (torch's ``FileBaton``), torch's ``lock`` file left behind by a build
    that was killed makes every later process wait on it forever; holding our flock proves that
    file is stale, so it is removed. Otherwise the file is torch's own advisory lock: left alone."""
    with open(build_dir / "lightvllm.flock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        baton = build_dir / "lock"
        if stale_baton and baton.exists():
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
    if not torch.cuda.is_available():
        return "no CUDA device is visible, so the CUDA kernels were not built"
    return "nvcc was not found (set CUDA_HOME or put nvcc on PATH), so the CUDA kernels were not built"
