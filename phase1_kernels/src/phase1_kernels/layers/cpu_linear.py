"""CPU GEMMs with prepacked weights, applied once after the weights are loaded.

``F.linear`` hands every call to MKL's ``sgemm``, which re-packs the weight into its blocked
layout on every call; at decode sizes (64 rows) and wide outputs (gate|up: 3072, lm_head: 49152)
that costs up to half the time (measured in docs/benchmarks.md, B5 step profile). Packing the
weight *once* removes that: our own AVX2 kernel (``torch.ops.lightvllm.packed_linear``, panels of
16 output columns, ``csrc/cpu/gemm_cpu.cpp``) or oneDNN's blocked layout
(``torch.ops.mkldnn._reorder_linear_weight`` + ``_linear_pointwise``, as vLLM-CPU and inductor's
freezing pass do).

``process_weights_after_loading(model)`` walks the model and gives each linear layer a
packed copy of its weight and an ``apply_linear`` (the matmul step of ``LinearBase``) that uses
it. The dense ``weight`` parameter stays (the tied embedding, ``state_dict`` and
tensor-parallel loaders read it). Phase 4's parallel layers override ``forward`` to add an
all-reduce or a gather around ``apply_linear``, so their shard's GEMM is packed too; a class
that overrides ``apply_linear`` itself is left alone. Choose with env ``LIGHTVLLM_CPU_LINEAR`` or ``mode``:

- ``packed`` (default where our C++ extension builds and the CPU has AVX2): our kernel below
  ``LARGE_BATCH_ROWS[mode]`` rows, MKL's ``F.linear`` from there. B5's 30 layers at 64 rows on
  the 2-core EPYC: 163 GFLOP/s against oneDNN's 129 and MKL's 112
  (``benchmarks/bench_cpu_gemm.py``, docs/benchmarks.md).
- ``onednn`` (the default where the extension is missing and oneDNN is present): oneDNN's pack
  below ``LARGE_BATCH_ROWS[mode]`` rows, ``F.linear`` from there.
- ``native``: ``F.linear`` (MKL), the reference.

fp32 only: bf16 layers stay native.
"""

from __future__ import annotations

import logging
import os
import types

import torch
import torch.nn.functional as F
from torch import nn

from .linear import LinearBase, set_weight_loader

logger = logging.getLogger(__name__)

ENV_VAR = "LIGHTVLLM_CPU_LINEAR"
MODES = ("packed", "onednn", "native")
PACK_BATCH_HINT = 64  # the row count oneDNN picks its blocking for (B5's decode batch)
# From this many rows on (prefill chunks), MKL's F.linear on the dense weight is as fast or
# faster (2-core AVX2 EPYC: oneDNN behind MKL by ~8-10 % from 1,024 rows; our kernel ahead of
# MKL up to 1,024 rows, level at 2,048): docs/benchmarks.md, B5 step profile.
LARGE_BATCH_ROWS = {"packed": 2048, "onednn": 1024}


def _extension_ready() -> bool:
    from ..ops import extension

    return extension.is_available("cpu")


def _has_avx2() -> bool:
    """Our kernel's tile is AVX2 + FMA (elsewhere it compiles to a plain loop, correct but slow)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def resolve_mode(mode: str | None = None) -> str:
    """``mode``, else env ``LIGHTVLLM_CPU_LINEAR``, else ``packed`` where our C++ extension
    builds on an AVX2 CPU, else ``onednn`` where oneDNN exists, else ``native``."""
    choice = (mode or os.environ.get(ENV_VAR) or "auto").lower()
    if choice == "auto":
        if _has_avx2() and _extension_ready():
            return "packed"
        return "onednn" if torch.backends.mkldnn.is_available() else "native"
    if choice not in MODES:
        raise ValueError(f"{ENV_VAR}/mode={choice!r} is not one of {('auto',) + MODES}")
    if choice == "onednn" and not torch.backends.mkldnn.is_available():
        raise RuntimeError("LIGHTVLLM_CPU_LINEAR=onednn but this torch was built without oneDNN")
    if choice == "packed" and not _extension_ready():
        from ..ops import extension

        raise RuntimeError(f"LIGHTVLLM_CPU_LINEAR=packed needs the C++ extension: "
                           f"{extension.why_unavailable('cpu')}")
    return choice


def _packable(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (isinstance(module, LinearBase)
            and type(module).apply_linear is LinearBase.apply_linear
            and isinstance(weight, torch.Tensor) and weight.device.type == "cpu"
            and weight.dtype == torch.float32 and weight.dim() == 2)


def _pack_onednn(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, PACK_BATCH_HINT)


def _run_onednn(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _pack_ours(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.lightvllm.pack_linear_weight(weight)


def _run_ours(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
              out_features: int) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape[0], out_features, dtype=x.dtype)
    torch.ops.lightvllm.packed_linear(out, rows, packed)
    if bias is not None:
        out += bias
    return out.view(*x.shape[:-1], out_features)


_PACKERS = {"packed": _pack_ours, "onednn": _pack_onednn}


def _packed_linear(self: LinearBase, x: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
    """``apply_linear`` on the layer's packed weight (packed at first use, so weights loaded
    after the pass are seen); large inputs and other dtypes/devices take ``F.linear``."""
    bias = self.bias if with_bias else None
    mode = self.__dict__["packed_mode"]
    if x.dtype != torch.float32 or x.device.type != "cpu" \
            or x.numel() >= LARGE_BATCH_ROWS[mode] * x.shape[-1]:
        return F.linear(x, self.weight, bias)
    packed = self.__dict__.get("packed_weight")
    if packed is None:
        with torch.inference_mode():
            packed = _PACKERS[mode](self.weight.detach())
        self.__dict__["packed_weight"] = packed
    if mode == "onednn":
        return _run_onednn(x, packed, bias)
    return _run_ours(x, packed, bias, self.weight.shape[0])


def _drop_pack_on_load(module: LinearBase, param: torch.Tensor) -> None:
    """Wrap ``param.weight_loader`` so loading new values discards the stale packed copy."""
    loader = getattr(param, "weight_loader", None)
    if loader is None or getattr(loader, "drops_pack_of", None) is module:
        return

    def load_and_drop(*args, **kwargs):
        module.__dict__["packed_weight"] = None
        return loader(*args, **kwargs)

    setattr(load_and_drop, "drops_pack_of", module)  # a marker on the function, read by getattr
    set_weight_loader(param, load_and_drop)


def pack_linear(module: LinearBase, mode: str = "packed") -> None:
    """Give ``module`` an ``apply_linear`` on a packed copy of its weight (``mode`` ``packed``:
    ours, ``onednn``: oneDNN's; packed now, and again at first use after any ``weight_loader``
    call)."""
    if mode not in _PACKERS:
        raise ValueError(f"pack_linear mode must be one of {tuple(_PACKERS)}, got {mode!r}")
    module.__dict__["packed_weight"] = None
    module.__dict__["packed_mode"] = mode
    module.__dict__["apply_linear"] = types.MethodType(_packed_linear, module)  # popped by unpack
    for param in module.parameters(recurse=False):
        _drop_pack_on_load(module, param)
    _packed_linear(module, torch.zeros(1, module.weight.shape[1]))


def unpack_linear(module: LinearBase) -> None:
    """Back to ``F.linear`` (drops the packed copy)."""
    module.__dict__.pop("apply_linear", None)
    module.__dict__.pop("packed_weight", None)
    module.__dict__.pop("packed_mode", None)


@torch.inference_mode()
def process_weights_after_loading(model: nn.Module, mode: str | None = None) -> int:
    """Prepack every plain fp32 CPU linear layer of ``model``; returns how many were packed."""
    mode = resolve_mode(mode)
    packed = 0
    for module in model.modules():
        if not isinstance(module, LinearBase):
            continue
        unpack_linear(module)
        if mode in _PACKERS and _packable(module):
            pack_linear(module, mode)
            packed += 1
    if packed:
        logger.info("prepacked %d linear layers (%s)", packed, mode)
    return packed
