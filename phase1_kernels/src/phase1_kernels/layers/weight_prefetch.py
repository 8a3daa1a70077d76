"""The next layer's weight into L2 while the short kernels between two GEMMs run.

In a decode step (1-16 rows) the memory is busy during a GEMM and nearly idle between two of them:
after qkv come RoPE with the K/V store, the attention split and its merge; after o and down a
norm. So the linear layers form a chain in the model's order (qkv -> o -> gate|up -> down -> the
next layer's qkv ... -> lm_head), and after each decode-size GEMM a layer launches ``prefetch_l2``
on the first ``LIGHTVLLM_PREFETCH_NEXT_MB`` of the next layer's weight (e.g. 24: half the 50 MB L2
of an H100 or H200). **Off by default** (0) until a GPU run has measured it against the same-run
baseline (gpu_session section ``b2next`` against ``b2``; docs/benchmarks.md).

The prefetch kernel lets its dependents start at once and waits for the kernel before it only at
its end (Hopper's programmatic dependent launch), so it costs the chain no wait and waiting on it
still means waiting on the GEMM; without PDL (before sm90, or ``LIGHTVLLM_PDL=0``) it would be a
serial kernel on the critical path, so it is not launched there. A prefetch is a hint: no value
changes (tests: ``test_small_batch_linear.py``). ``gpu_linear.tune_small_batch_linears`` builds
the chain.
"""

from __future__ import annotations

import logging
import os

import torch

from ..ops import compiled
from .linear import LinearBase

logger = logging.getLogger(__name__)

ENV_VAR = "LIGHTVLLM_PREFETCH_NEXT_MB"
DEFAULT_MB = 0  # off until measured (section b2next vs b2)


def nbytes(device: torch.device) -> int:
    """Bytes of the next weight to prefetch: 0 off Hopper, without PDL, or when the env says 0."""
    mb = int(os.environ.get(ENV_VAR, str(DEFAULT_MB)) or 0)
    if mb <= 0 or os.environ.get("LIGHTVLLM_PDL", "1") == "0" or device.type != "cuda":
        return 0
    return mb << 20 if torch.cuda.get_device_capability(device)[0] >= 9 else 0


def chain(layers: list[LinearBase], size: int) -> None:
    """Give each layer the weight of the one after it (``layers`` in run order) to prefetch;
    ``size`` 0 removes every link."""
    for layer, after in zip(layers, layers[1:]):
        if size > 0 and after.weight.is_contiguous():
            layer.__dict__["prefetch_next"] = (after.weight, size)
        else:
            layer.__dict__.pop("prefetch_next", None)
    if layers:
        layers[-1].__dict__.pop("prefetch_next", None)
    if size > 0:
        logger.info("next-weight prefetch: %d MB after each decode GEMM of %d layers",
                    size >> 20, len(layers))


def after_gemm(layer: LinearBase) -> None:
    """Called by a layer right after its decode-size GEMM: the next weight on its way to L2."""
    target = layer.__dict__.get("prefetch_next")
    if target is not None:
        compiled.prefetch_l2(target[0], target[1])
