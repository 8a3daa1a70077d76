"""The phase-1 kernels and the choice between their implementations.

Every op exists as up to four implementations with one calling convention:

    rms_norm(x, weight, eps) -> out
    fused_add_rms_norm(x, residual, weight, eps) -> (out, residual)
    rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox) -> (query, key)
    silu_and_mul(x) -> out

``native`` (plain PyTorch, the reference), ``cpp`` (our C++ extension: CPU kernels for CPU tensors,
CUDA kernels for CUDA tensors, registered as ``torch.ops.lightvllm.*``) and ``triton``. The
in-place kernels (fused_add_rms_norm, rotary_embedding) update and return the tensors they were
given; the native versions return new tensors. Callers always use the returned values.

``get_ops(impl)`` returns the module implementing one of them; ``resolve_impl(requested, device)``
turns a request (an argument, else env ``LIGHTVLLM_KERNEL_IMPL``, else ``auto``) into the name of
an implementation that runs on ``device``.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from . import native

IMPLS = ("native", "cpp", "triton")
ENV_VAR = "LIGHTVLLM_KERNEL_IMPL"


def get_ops(impl: str) -> ModuleType:
    """Module with the four ops for implementation ``impl`` (``native``, ``cpp`` or ``triton``)."""
    if impl == "native":
        return native
    if impl == "cpp":
        from . import compiled

        return compiled
    if impl == "triton":
        from . import triton_ops

        return triton_ops
    raise ValueError(f"unknown kernel implementation {impl!r}; choose one of {IMPLS}")


def available_impls(device: torch.device | str) -> list[str]:
    """The implementations that can run on ``device``, fastest-preferred order last to first."""
    device = torch.device(device)
    found = ["native"]
    from . import extension

    if extension.is_available(device):
        found.append("cpp")
    from . import triton_ops

    if triton_ops.is_available(device):
        found.append("triton")
    return found


def resolve_impl(requested: str | None, device: torch.device | str) -> str:
    """Pick the implementation: ``requested``, else env ``LIGHTVLLM_KERNEL_IMPL``, else ``auto``.

    ``auto`` prefers the compiled kernels, then Triton on GPU, then native. Asking for one that
    cannot run on ``device`` raises with the reason instead of silently falling back.
    """
    choice = (requested or os.environ.get(ENV_VAR) or "auto").lower()
    device = torch.device(device)
    if choice == "native":
        return choice
    if choice == "auto":
        avail = available_impls(device)
        if "cpp" in avail:
            return "cpp"
        if device.type == "cuda" and "triton" in avail:
            return "triton"
        return "native"
    if choice not in IMPLS:
        raise ValueError(f"{ENV_VAR}/impl={choice!r} is not one of {('auto',) + IMPLS}")
    if choice not in available_impls(device):
        from . import extension, triton_ops

        why = extension.why_unavailable(device) if choice == "cpp" else triton_ops.why_unavailable(device)
        raise RuntimeError(f"kernel implementation {choice!r} is not available on {device}: {why}")
    return choice
