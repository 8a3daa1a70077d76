"""Small-batch GEMMs on the GPU: cuBLAS or one of our kernels, chosen by measurement.

A decode step of 1-16 sequences streams every weight once; how close a linear layer gets to
the copy bandwidth depends on the GEMM's tiling for that exact shape (``ops/skinny_gemm.py``
says why cuBLAS leaves SMs idle for some). So, like vLLM's tuned kernels and
``torch.compile``'s max-autotune, the choice is measured: ``tune_small_batch_linears`` times
cuBLAS (``F.linear``) and each candidate kernel on the model's own weights, for each weight
shape and each row count of 1, 2, 4, ..., 16 (the decode graph sizes), cycling through every
layer of that shape so the weights come from memory as in a real step (not from L2), and gives
the layers of a shape an ``apply_linear`` that takes the winner. Rows above 16, prefill and the
CPU keep ``F.linear``. The candidates: our CUDA weight-streaming kernel
(``small_batch_linear``, one warp per 1/2/4 output columns, up to 8 rows; fastest at one row),
the tensor-core weight stream (``mma_linear``, mma.sync with the weight as the A operand, blocks
of 4 or 8 warps splitting K over 1 or 2 tiles of 16 columns, up to 16 rows; for 2-16 rows,
where the GEMV runs out of ALU) and the Triton skinny GEMM (up to 16 rows). The tensor-core kernel
is a candidate of ``tuned`` and ``auto`` by default (H100: 1-14 % faster than cuBLAS in 19 of the
8B shapes' 20 cases at 2-16 rows, qkv at 16 rows 3 % slower; B4's 4 req/s decode step 6.26 -> 5.98 ms); env ``LIGHTVLLM_MMA_LINEAR=0`` leaves it out
(its same-run baseline). Env ``LIGHTVLLM_GPU_LINEAR``:

* ``tuned`` (the default) — cuBLAS against the CUDA GEMV and the tensor-core weight stream
  (unless ``LIGHTVLLM_MMA_LINEAR=0``; both compiled with the extension: tuning costs about a
  second of the first start-up on a machine, no Triton compile);
* ``cublas`` — never ours, no tuning (the same-run baseline of ``tuned``);
* ``auto`` — cuBLAS against both of ours (the Triton one adds ~6 s of start-up on a cold cache);
* ``skinny`` / ``gemv`` / ``mma`` — always that kernel where it applies (tests, comparisons).

Each candidate is timed over every layer of its shape, launched eagerly (the default) or, with
``LIGHTVLLM_GEMM_TIMING=graph``, replayed from a CUDA graph: eager timing counts a short GEMM's
Python launch (see ``TIMING_ENV``), which a graphed decode step never pays.

The pass also chains the tuned layers for ``weight_prefetch`` (after a decode-size GEMM, the
next layer's weight into L2; off by default).

The MLP's gate|up layer is measured with its activation: cuBLAS then the silu_and_mul kernel
against our kernel with SiLU·mul as its epilogue (``small_batch_linear_silu``: each warp reads the
gate and the up row of its outputs), the same bits as the two kernels; env
``LIGHTVLLM_FUSE_SILU=0`` measures and runs the plain GEMM (the same-run baseline).

Before a kernel is timed its output is compared with cuBLAS's on the same operands
(``disagreement``): one that differs by more than rounding is logged and never picked, so a kernel
that is fast because it is wrong cannot win.

A choice by timing can flip between runs where two kernels are within noise, and a different
kernel sums in a different order: in bf16 greedy tokens may then differ from one engine to the
next (the H100 engine test that compares an eager and a graphed engine failed that way). So ours
must win by ``MARGIN`` (3 %), and the choice is measured once per process, device, dtype, mode,
shape and row bucket and reused by every later model (``_CHOSEN``), and kept on disk for the next
runs on the machine (``gemm_choice_cache``: delete the file or set
``LIGHTVLLM_GPU_LINEAR_CACHE=0`` to measure again).

Measured on an H100 (docs/benchmarks.md): inside CUDA graphs at one row the CUDA kernel reads
o_proj's weight at 0.82 of the copy bandwidth (cuBLAS 0.71), gate_up 0.99 (0.95), lm_head 1.05
(0.89); from 2-4 rows on cuBLAS wins most shapes. B2 +3.5 % and +1.9 % in two calls. ``tuned``
becomes the default once a GPU run has passed the engine tests with the margin and the
per-process choice. The Triton kernel alone gave no B2 gain (163.5 vs 163.2 tok/s).
"""

from __future__ import annotations

import logging
import os
import types
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from shared.bench import cuda_graph_seconds_per_call, cuda_seconds_per_call

from ..ops import compiled, extension, skinny_gemm
from ..ops.skinny_gemm import MAX_ROWS, SkinnyConfig
from . import gemm_choice_cache, weight_prefetch
from .activation import SiluAndMul
from .linear import LinearBase

logger = logging.getLogger(__name__)

ENV_VAR = "LIGHTVLLM_GPU_LINEAR"
FUSE_SILU_ENV = "LIGHTVLLM_FUSE_SILU"
# "0": tuned/auto leave the tensor-core kernel out (the baseline of its measured gain; the H100 run
# that made it a default candidate: docs/benchmarks.md, sixteenth session)
MMA_ENV = "LIGHTVLLM_MMA_LINEAR"
# how each candidate is timed: "graph" replays a CUDA graph of the calls (device time only, as a
# decode step runs); "eager" launches them from Python, where a short GEMM (o_proj, ~15 µs on an
# H100) is timed by its launch cost: cuBLAS's o_proj read 25 µs eager, 15.5 µs in a graph
# (docs/benchmarks.md, seventeenth session)
TIMING_ENV = "LIGHTVLLM_GEMM_TIMING"
TIMINGS = ("graph", "eager")
DEFAULT_TIMING = "eager"
MODES = ("auto", "tuned", "cublas", "skinny", "gemv", "mma")
DEFAULT_MODE = "tuned"  # H100: B2 +1.0-3.5 % in 4 of 5 same-call pairs, every GPU engine test passes
MARGIN = 0.03  # ours must be this much faster than cuBLAS: a near-tie stays cuBLAS
_CHOSEN: dict[tuple, "ShapeChoice"] = {}  # one measurement per process and shape: see remember()
ROW_BUCKETS = (1, 2, 4, 8, 16)
GEMV_MAX_ROWS = 8  # the CUDA kernel's limit (one accumulator per row and column per lane)
GEMV_COLS = (1, 2, 4)  # output columns per warp
MMA_CONFIGS = ((4, 1), (8, 1), (4, 2), (8, 2))  # tensor-core kernel: (warps splitting K, tiles)
# a candidate whose output is further than this from cuBLAS's (max abs difference over the
# reference's max abs value) is never timed: a correct kernel differs by rounding (at most ~4e-3
# in bf16: half a unit in the last place), a wrong one by O(1)
AGREEMENT_TOLERANCE = 2e-2


@dataclass(frozen=True)
class Candidate:
    """One kernel that can replace ``F.linear`` for ``max_rows`` rows or fewer."""

    label: str
    max_rows: int
    run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    # gate|up [2d, K] -> silu(gate) * up [M, d] in the same kernel, where the kernel has it
    run_silu: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # why the kernel cannot take (x, weight), "" if it can; None: any x of max_rows rows or fewer
    refusal: Callable[[torch.Tensor, torch.Tensor], str] | None = None

    def fits(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        return 0 < x.shape[0] <= self.max_rows


def _gemv(cols: int) -> Candidate:
    # checked=False: every call goes through _accepts, which has just asked for the refusal
    return Candidate(f"gemv{cols}", GEMV_MAX_ROWS,
                     lambda x, w: compiled.small_batch_linear(x, w, cols, checked=False),
                     lambda x, w: compiled.small_batch_linear_silu(x, w, cols, checked=False),
                     lambda x, w: compiled.small_batch_linear_refusal(x, w, cols))


def _mma(warps: int, tiles: int) -> Candidate:
    return Candidate(f"mma{warps}" + (f"x{tiles}" if tiles > 1 else ""), MAX_ROWS,
                     lambda x, w: compiled.mma_linear(x, w, warps, tiles, checked=False),
                     lambda x, w: compiled.mma_linear_silu(x, w, warps, tiles, checked=False),
                     lambda x, w: compiled.mma_linear_refusal(x, w, warps, tiles))


def _skinny(config: SkinnyConfig) -> Candidate:
    return Candidate(f"skinny{config.block_n}x{config.block_k}", MAX_ROWS,
                     lambda x, w: skinny_gemm.skinny_linear(x, w, config))


def candidates(mode: str) -> list[Candidate]:
    """The kernels ``mode`` measures against cuBLAS (or forces, for skinny/gemv)."""
    ours = not extension.why_unavailable("cuda")
    gemv = [_gemv(c) for c in GEMV_COLS] if ours else []
    mma = [_mma(w, t) for w, t in MMA_CONFIGS] if ours else []
    if mode in ("tuned", "auto") and os.environ.get(MMA_ENV, "1") == "0":
        mma = []
    skinny = [_skinny(c) for c in skinny_gemm.CONFIGS] if not skinny_gemm.why_unavailable("cuda") else []
    return {"tuned": gemv + mma, "gemv": gemv, "mma": mma, "skinny": skinny,
            "auto": gemv + mma + skinny}.get(mode, [])


@dataclass
class ShapeChoice:
    """Per row bucket, the candidate that beat cuBLAS (absent: cuBLAS), and the timings."""

    configs: dict[int, Candidate] = field(default_factory=dict)
    timings_us: dict[int, dict[str, float]] = field(default_factory=dict)


def resolve_mode(mode: str | None = None) -> str:
    choice = (mode or os.environ.get(ENV_VAR) or DEFAULT_MODE).lower()
    if choice not in MODES:
        raise ValueError(f"{ENV_VAR}/mode={choice!r} is not one of {MODES}")
    return choice


def row_bucket(rows: int) -> int:
    return next(b for b in ROW_BUCKETS if b >= rows)


def _accepts(kernel: Candidate, x: torch.Tensor, weight: torch.Tensor) -> bool:
    if not kernel.fits(x, weight):
        return False
    return kernel.refusal is None or not kernel.refusal(x, weight)


def _reference(x: torch.Tensor, weight: torch.Tensor, fused_silu: bool) -> torch.Tensor:
    out = F.linear(x, weight)
    return compiled.silu_and_mul(out) if fused_silu else out


def disagreement(kernel: Candidate, x: torch.Tensor, weight: torch.Tensor, fused_silu: bool) -> str:
    """Why ``kernel``'s output for (x, weight) cannot stand in for cuBLAS's, "" if it can: the
    gate before a kernel is timed, so that a fast but wrong one is never picked."""
    run = kernel.run_silu if fused_silu else kernel.run
    assert run is not None  # callers keep only kernels with the epilogue when fused
    expected = _reference(x, weight, fused_silu).float()
    got = run(x, weight)
    if got.shape != expected.shape:
        return f"{kernel.label} gave shape {tuple(got.shape)}, cuBLAS {tuple(expected.shape)}"
    scale = expected.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    error = ((got.float() - expected).abs().max() / scale).item()
    if not error <= AGREEMENT_TOLERANCE:  # also NaN
        return f"{kernel.label} differs from cuBLAS by {error:.3g} of the output's range"
    return ""


def _agreeing(kernels: list[Candidate], x: torch.Tensor, weight: torch.Tensor,
              fused_silu: bool) -> list[Candidate]:
    """``kernels`` less those whose output disagrees with cuBLAS's, each logged."""
    kept = []
    for kernel in kernels:
        why = disagreement(kernel, x, weight, fused_silu)
        if why:
            logger.warning("small-batch GEMM %s: not used: %s", tuple(weight.shape), why)
        else:
            kept.append(kernel)
    return kept


def _small_batch_linear(self: LinearBase, x: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
    bias = self.bias if with_bias else None
    if x.dim() == 2 and 0 < x.shape[0] <= MAX_ROWS and x.stride(1) == 1:
        kernel = self.__dict__["skinny_choice"].configs.get(row_bucket(x.shape[0]))
        if kernel is not None and _accepts(kernel, x, self.weight):
            out = kernel.run(x, self.weight)
            out = out if bias is None else out.add_(bias)
        else:
            out = F.linear(x, self.weight, bias)
        weight_prefetch.after_gemm(self)
        return out
    return F.linear(x, self.weight, bias)


def _small_batch_linear_act(self: LinearBase, x: torch.Tensor, act) -> torch.Tensor:
    """gate|up then SiLU·mul: one kernel where the chosen GEMM has the epilogue, else two."""
    if (isinstance(act, SiluAndMul) and act.impl == "cpp" and x.dim() == 2
            and 0 < x.shape[0] <= MAX_ROWS and x.stride(1) == 1):
        kernel = self.__dict__["skinny_choice"].configs.get(row_bucket(x.shape[0]))
        if kernel is not None and kernel.run_silu is not None and _accepts(kernel, x, self.weight):
            out = kernel.run_silu(x, self.weight)
            weight_prefetch.after_gemm(self)
            return out
    return act(self(x))


def _fusable_gate_up(module: LinearBase) -> bool:
    """Two equal stacked halves (gate|up), no bias, the output this rank's own (not gathered),
    and the forward the plain one: then gate|up + SiLU·mul may be one kernel."""
    sizes = getattr(module, "output_sizes", None)
    return (os.environ.get(FUSE_SILU_ENV, "1") != "0" and sizes is not None and len(sizes) == 2
            and sizes[0] == sizes[1] and module.bias is None and module.weight.shape[0] % 2 == 0
            and not getattr(module, "gather_output", False)
            and type(module).forward_act is LinearBase.forward_act)


def _eligible(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (isinstance(module, LinearBase)
            and type(module).apply_linear is LinearBase.apply_linear
            and "apply_linear" not in module.__dict__  # another pass (CPU packing) owns it
            and isinstance(weight, torch.Tensor) and weight.device.type == "cuda"
            and weight.dtype in (torch.float16, torch.bfloat16) and weight.dim() == 2
            and weight.stride(1) == 1)


def timing_mode() -> str:
    """How candidates are timed (``TIMING_ENV``): ``graph`` or ``eager``."""
    timing = os.environ.get(TIMING_ENV, DEFAULT_TIMING).lower()
    if timing not in TIMINGS:
        raise ValueError(f"{TIMING_ENV}={timing!r} is not one of {TIMINGS}")
    return timing


def _time_us(run, weights: list[torch.Tensor], reps: int = 3) -> float:
    """Mean µs per call of ``run(w)`` over every weight in turn (cold L2, as in a real step),
    replayed from a CUDA graph or launched eagerly (``timing_mode``)."""
    for w in weights[:2]:
        run(w)  # compile / pick the algorithm

    def every_layer() -> None:
        for w in weights:
            run(w)

    per_call = cuda_graph_seconds_per_call if timing_mode() == "graph" else cuda_seconds_per_call
    return 1e6 * per_call(every_layer, reps) / len(weights)


def _measure_shape(weights: list[torch.Tensor], buckets: list[int], mode: str,
                   kernels: list[Candidate], fused_silu: bool = False) -> ShapeChoice:
    """Per row bucket, cuBLAS against each kernel that fits and agrees with it. ``fused_silu`` (a gate|up shape whose
    SiLU·mul our kernel takes as its epilogue): cuBLAS is timed with the silu_and_mul kernel after
    it and ours with the epilogue, the two ways the MLP can run."""
    choice = ShapeChoice()
    k = weights[0].shape[1]
    for rows in buckets:
        x = torch.randn(rows, k, dtype=weights[0].dtype, device=weights[0].device)
        fitting = _agreeing([c for c in kernels if _accepts(c, x, weights[0])
                             and (not fused_silu or c.run_silu is not None)], x, weights[0], fused_silu)
        if fused_silu:
            times = {"cublas": _time_us(lambda w: compiled.silu_and_mul(F.linear(x, w)), weights)}
        else:
            times = {"cublas": _time_us(lambda w: F.linear(x, w), weights)}
        for kernel in fitting:
            run = kernel.run_silu if fused_silu else kernel.run
            assert run is not None  # fitting keeps only kernels with the epilogue when fused
            times[kernel.label] = _time_us(lambda w, run=run: run(x, w), weights)
        if fitting:
            best = min(fitting, key=lambda c: times[c.label])
            if mode in ("skinny", "gemv", "mma") or times[best.label] < (1 - MARGIN) * times["cublas"]:
                choice.configs[rows] = best
        choice.timings_us[rows] = times
    return choice


def disk_key(key: tuple, kernels: list[Candidate]) -> str:
    """The on-disk record's key for an in-process choice ``key``: the same plus the torch/CUDA
    versions, ``+silu`` for a gate|up timed with its activation (another measurement than the
    plain GEMM), the candidates' labels (a record made without a kernel never stands in for a
    choice that may pick it) and the timing where it is not the eager one (``timing_mode``)."""
    device_name, dtype, mode, shape, buckets, fused_silu = key
    mode_key = ((mode + "+silu" if fused_silu else mode) + " [" + " ".join(c.label for c in kernels)
                + "]" + ("" if timing_mode() == "eager" else " " + timing_mode()))
    versions = f"torch {torch.__version__} cuda {torch.version.cuda}"
    return gemm_choice_cache.key(device_name, versions, str(dtype), mode_key, shape, buckets)


def _recall_or_measure(key: tuple, weights: list[torch.Tensor], kernels: list[Candidate]) -> ShapeChoice:
    """The choice recorded on disk for this machine and shape (``gemm_choice_cache``), else a
    new measurement, recorded for the next run."""
    _, _, mode, _, buckets, fused_silu = key
    disk = disk_key(key, kernels)
    recorded = gemm_choice_cache.load(disk)
    by_label = {c.label: c for c in kernels}
    if recorded is not None and set(recorded["picks"].values()) <= set(by_label):
        return ShapeChoice(
            configs={int(b): by_label[label] for b, label in recorded["picks"].items()},
            timings_us={int(b): t for b, t in recorded.get("timings_us", {}).items()})
    choice = _measure_shape(weights, list(buckets), mode, kernels, fused_silu)
    gemm_choice_cache.store(disk, {b: c.label for b, c in choice.configs.items()},
                            choice.timings_us)
    return choice


@torch.inference_mode()
def tune_small_batch_linears(model: nn.Module, max_rows: int = MAX_ROWS,
                             mode: str | None = None) -> dict[tuple[int, int], ShapeChoice]:
    """Measure and install the small-batch GEMM choice of every eligible linear layer of
    ``model`` (CUDA, fp16/bf16); returns the choice per (out, in) shape."""
    mode = resolve_mode(mode)
    layers: dict[tuple[int, int], list[LinearBase]] = defaultdict(list)
    for module in model.modules():
        if isinstance(module, LinearBase) and _eligible(module):
            n, k = module.weight.shape
            layers[(n, k)].append(module)
    kernels = candidates(mode)
    if not kernels or not layers:
        return {}
    buckets = [b for b in ROW_BUCKETS if b <= max(1, min(max_rows, MAX_ROWS))]
    choices = {}
    for shape, modules in layers.items():
        weight = modules[0].weight
        fused_silu = all(_fusable_gate_up(m) for m in modules)
        key = (torch.cuda.get_device_name(weight.device), weight.dtype, mode, shape, tuple(buckets),
               fused_silu)
        # another candidate set or timing: another choice
        chosen = (key, tuple(c.label for c in kernels), timing_mode())
        if chosen not in _CHOSEN:
            _CHOSEN[chosen] = _recall_or_measure(key, [m.weight for m in modules], kernels)
        choice = choices[shape] = _CHOSEN[chosen]
        for module in modules:
            module.__dict__["skinny_choice"] = choice
            module.__dict__["apply_linear"] = types.MethodType(_small_batch_linear, module)
            if fused_silu:
                module.__dict__["forward_act"] = types.MethodType(_small_batch_linear_act, module)
    ordered = [m for m in model.modules() if isinstance(m, LinearBase) and "skinny_choice" in m.__dict__]
    if ordered:
        weight_prefetch.chain(ordered, weight_prefetch.nbytes(ordered[0].weight.device))
    torch.cuda.synchronize()
    logger.info("small-batch GEMMs: %s", describe(choices))
    return choices


def describe(choices: dict[tuple[int, int], ShapeChoice]) -> str:
    """One part per shape: per row bucket the µs of cuBLAS and of the chosen kernel, then in
    brackets every other candidate's (why it lost is then in the log, not only that it did)."""
    parts = []
    for (n, k), choice in choices.items():
        cells = []
        for rows, times in choice.timings_us.items():
            config = choice.configs.get(rows)
            picked = f"{config.label} {times[config.label]:.1f}" if config else "cublas"
            losers = " ".join(f"{label} {us:.1f}" for label, us in times.items()
                              if label != "cublas" and (config is None or label != config.label))
            cells.append(f"M={rows}: cublas {times['cublas']:.1f} -> {picked}"
                         + (f" ({losers})" if losers else ""))
        parts.append(f"[{n}x{k}] " + ", ".join(cells))
    return f"{timing_mode()} timing; " + "; ".join(parts)
