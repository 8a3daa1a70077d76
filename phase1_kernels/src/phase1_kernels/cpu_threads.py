"""Intra-op threads for CPU inference: one per core we may use, each pinned to its core.

On a small machine the engine's forward pass owns every core: torch's OpenMP pool runs one
thread per core, and any other busy thread (a tokenizer's thread pool, an HTTP worker) makes
the OpenMP barrier wait for a descheduled thread, which costs far more than the work it did.
``configure_cpu_threads()`` (called once by the model runner before the first step):

- sets torch's intra-op threads to the cores in this process's affinity mask (or
  ``LIGHTVLLM_CPU_THREADS``) and its inter-op pool to 1 thread (the engine does not use it);
- pins OpenMP thread i to the i-th of those cores (vLLM-CPU's ``VLLM_CPU_OMP_THREADS_BIND``),
  through our C++ op ``lightvllm::bind_threads`` (no-op where the extension is missing);
- stops HuggingFace ``tokenizers`` from starting its own pool per call
  (``TOKENIZERS_PARALLELISM=false``, unless the user set it).

Env ``LIGHTVLLM_CPU_BIND=0`` skips the pinning; ``LIGHTVLLM_CPU_BIND=2-3`` picks the cores.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

THREADS_ENV = "LIGHTVLLM_CPU_THREADS"
BIND_ENV = "LIGHTVLLM_CPU_BIND"


@dataclass
class CpuThreadConfig:
    num_threads: int
    bound_cpus: list[int]  # the core of OpenMP thread i; empty if not pinned


def parse_cpu_list(spec: str) -> list[int]:
    """``"0-3,6"`` -> ``[0, 1, 2, 3, 6]`` (the ``taskset``/``VLLM_CPU_OMP_THREADS_BIND`` format)."""
    cpus: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"CPU list {spec!r}: {part!r} is not N or N-M") from None
        if first < 0 or last < first:
            raise ValueError(f"CPU list {spec!r}: bad range {part!r}")
        cpus.extend(range(first, last + 1))
    if not cpus:
        raise ValueError(f"CPU list {spec!r} names no CPU")
    return cpus


def _current_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


# Read once, before any pinning: pinning OpenMP thread 0 pins the main thread, whose mask is
# what sched_getaffinity(0) reports afterwards (and what processes started later inherit).
_PROCESS_CPUS = _current_cpus()


def usable_cpus() -> list[int]:
    """The cores this process may run on (its affinity mask when it started), in order."""
    return list(_PROCESS_CPUS)


def restore_process_affinity() -> None:
    """Give the calling thread (or, as a ``preexec_fn``, a child process) the mask this process
    started with: a worker started after the engine pinned its threads inherits only core 0."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, _PROCESS_CPUS)


def _choose_cpus(num_threads: int | None) -> tuple[int, list[int]]:
    bind = os.environ.get(BIND_ENV, "")
    cpus = parse_cpu_list(bind) if bind not in ("", "0", "1", "auto") else usable_cpus()
    allowed = set(usable_cpus()) | set(_current_cpus())  # the mask may have been set since
    outside = [c for c in cpus if c not in allowed]
    if outside:
        raise ValueError(f"{BIND_ENV}={bind!r} names CPUs {outside} outside this process's "
                         f"affinity {sorted(allowed)}")
    requested = num_threads or int(os.environ.get(THREADS_ENV) or 0) or len(cpus)
    if requested < 1:
        raise ValueError(f"the number of CPU threads must be >= 1, got {requested}")
    return requested, cpus[:requested]


def configure_cpu_threads(num_threads: int | None = None) -> CpuThreadConfig:
    """Size and pin torch's intra-op pool for inference; returns what was done."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads, cpus = _choose_cpus(num_threads)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already started (set once per process): keep it
        pass
    bound: list[int] = []
    if os.environ.get(BIND_ENV, "") != "0" and len(cpus) == threads:
        bound = _bind(cpus)
    logger.info("CPU threads: %d intra-op, bound to %s", threads, bound or "no fixed cores")
    return CpuThreadConfig(threads, bound)


def _bind(cpus: list[int]) -> list[int]:
    from .ops import extension

    if not extension.is_available("cpu"):
        return []
    return list(torch.ops.lightvllm.bind_threads(cpus))
