"""Compile the start-up's Triton kernel variants in parallel before anything runs them.

On a machine that never ran the engine, Triton compiles each kernel variant (a kernel and its
constants, dtypes and integer specializations) the first time it is launched. Start-up launches
them one after the other (the warm-up batches, then one decode step per captured graph size), so
the compiles add up: warm-up 5.3 s and capture 2.2 s of a 13.0 s ``lightvllm serve`` of the 8B
shape on an H100 with an empty Triton cache (0.1 and 0.8 s warm). Most of a compile runs in C++
(MLIR passes, LLVM, ptxas) and releases the GIL, so compiles run well side by side: with this
pass the same start took 8.4 s (docs/benchmarks.md).

``compile_start_up_kernels`` runs the same forward passes once, through the first decoder layer
only (every layer launches the same variants), with every Triton launch turned into a compile
request (``triton_compile_only``): Triton's ``AsyncCompileMode`` compiles each
distinct variant once on a thread pool and puts it into the kernel's own cache, so the real
warm-up and capture that follow find every variant compiled. Nothing Triton computes is launched
in that pass; the tensors the other kernels read then are garbage that is never kept. Where
Triton has no ``AsyncCompileMode`` the pass is skipped, and the warm-up compiles as before.
Each compiled variant is then loaded on the same pool (``load_kernels``): its launcher, a small
C stub per kernel signature that Triton builds with the host's C compiler, and its binary.
``LIGHTVLLM_COMPILE_AHEAD=0`` skips it too (the same-run baseline of the cold start-up).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .model_runner import ModelRunner

logger = logging.getLogger(__name__)

MAX_WORKERS = 16


@dataclass
class CompileAhead:
    """What one compile-ahead pass did (``variants``: distinct kernel variants it compiled)."""

    variants: int = 0
    seconds: float = 0.0


def enabled() -> bool:
    return os.environ.get("LIGHTVLLM_COMPILE_AHEAD", "1") != "0"


def _async_compile_mode() -> Any:
    try:
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:  # a Triton before the mode: compile on first launch as ever
        return None
    return AsyncCompileMode


@contextmanager
def triton_compile_only(pool: Executor) -> Iterator[Any]:
    """Inside: a Triton kernel launch submits its variant's compile to ``pool`` and launches
    nothing. Leaving waits for every compile and caches it in its kernel. Yields the
    ``AsyncCompileMode`` (``future_kernels``: one per distinct variant), or None where this
    Triton lacks it (then nothing changes)."""
    mode_class = _async_compile_mode()
    if mode_class is None:
        yield None
        return
    from triton.runtime.jit import JITFunction

    launch = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        return launch(self, *args, grid=grid, warmup=True, **kwargs)

    JITFunction.run = compile_only
    try:
        mode = mode_class(pool)
        with mode:
            yield mode
    finally:
        JITFunction.run = launch


def load_kernels(kernels: list[Any], pool: Executor, device: int) -> None:
    """Ready each compiled variant for its first launch, on ``pool``: Triton builds a small C
    launcher per kernel signature with the host's C compiler and loads the binary into the
    device's context, which the first launch would otherwise do, one kernel at a time. A
    variant that cannot load (too much shared memory) is left to raise at its launch as ever."""
    def load(kernel: Any) -> None:
        torch.cuda.set_device(device)  # the device's context, current in this thread
        try:
            kernel._init_handles()
        except Exception as error:
            logger.debug("kernel %s left to its first launch: %s", kernel, error)

    list(pool.map(load, kernels))


def _one_layer(model: Any) -> AbstractContextManager:
    """Every decoder layer launches the same kernel variants: the pass runs one (the phase-1
    model's ``first_layers_only``; a model without it runs whole)."""
    limit = getattr(getattr(model, "model", None), "first_layers_only", None)
    return limit(1) if limit is not None else nullcontext()


@torch.inference_mode()
def compile_start_up_kernels(runner: "ModelRunner", capture_decode: bool) -> CompileAhead | None:
    """The warm-up batches and (``capture_decode``) a decode step of every graph size, with
    Triton compiling instead of launching. None if skipped."""
    if not enabled():
        return None
    start = time.perf_counter()
    workers = min(MAX_WORKERS, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers, thread_name_prefix="triton-compile") as pool:
        futures = _compile_forward_passes(runner, capture_decode, pool)
        if futures is None:
            logger.info("this Triton has no AsyncCompileMode: kernels compile at first launch")
            return None
        kernels = [f.kernel for f in futures if getattr(f, "kernel", None) is not None]
        load_kernels(kernels, pool, torch.cuda.current_device())  # the runner's device
    torch.cuda.synchronize()
    result = CompileAhead(len(futures), time.perf_counter() - start)
    logger.info("compiled and loaded %d Triton kernel variants ahead on %d threads in %.2f s",
                result.variants, workers, result.seconds)
    return result


def _compile_forward_passes(runner: "ModelRunner", capture_decode: bool,
                            pool: Executor) -> list[Any] | None:
    """The warm-up batches and (``capture_decode``) a decode step of every graph size through
    one layer, compiling on ``pool``; returns the variants' futures, all done (None: no
    AsyncCompileMode)."""
    graphs = runner.graphs
    with triton_compile_only(pool) as mode, _one_layer(runner.model):
        if mode is None:
            return None
        for q_lens, seq_lens in graphs.warm_up_shapes():
            graphs.run_shape(q_lens, seq_lens)
        if capture_decode:
            graphs.reset_decode_inputs()
            for size in graphs.capture_sizes():
                runner.model.compute_logits(runner.model(*graphs.decode_inputs(size)))
        futures = list(mode.future_kernels.values())
    return futures
