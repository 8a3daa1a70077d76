"""CPU GEMMs with prepacked weights, applied once after the weights are loaded.

``F.linear`` hands every call to MKL's ``sgemm``, which re-packs the weight into its blocked
layout on every call; at decode sizes (64 rows) and wide outputs (gate|up: 3072, lm_head: 49152)
that costs up to half the time (measured in docs/benchmarks.md, B5 step profile). oneDNN can
reorder the weight into its blocked layout *once* (``torch.ops.mkldnn._reorder_linear_weight``)
and then run ``torch.ops.mkldnn._linear_pointwise`` on it, as vLLM-CPU and inductor's freezing
pass do.

``process_weights_after_loading(model)`` walks the model and gives each linear layer a
packed copy of its weight and an ``apply_linear`` (the matmul step of ``LinearBase``) that uses
it. The dense ``weight`` parameter stays (the tied embedding, ``state_dict`` and
tensor-parallel loaders read it). Phase 4's parallel layers override ``forward`` to add an
all-reduce or a gather around ``apply_linear``, so their shard's GEMM is packed too; a class
that overrides ``apply_linear`` itself is left alone. Choose with env ``LIGHTVLLM_CPU_LINEAR`` or ``mode``:

- ``onednn`` (default on CPU when oneDNN is present): prepacked oneDNN weights for inputs of
  fewer than ``LARGE_BATCH_ROWS`` rows (decode), MKL's ``F.linear`` from there (prefill chunks).
- ``native``: ``F.linear`` (MKL), the reference.

fp32 only: the bf16 oneDNN path needs AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT; where the CPU has
neither, bf16 layers stay native.
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
MODES = ("onednn", "native")
PACK_BATCH_HINT = 64  # the row count oneDNN picks its blocking for (B5's decode batch)
# From this many rows on (prefill chunks), MKL's F.linear on the dense weight beat the packed
# oneDNN GEMM on the 2-core AVX2 EPYC (~8-10 % at 1,024-2,048 rows; oneDNN ahead below 1,024):
# docs/benchmarks.md, B5 step profile.
LARGE_BATCH_ROWS = 1024


def resolve_mode(mode: str | None = None) -> str:
    """``mode``, else env ``LIGHTVLLM_CPU_LINEAR``, else ``onednn`` where oneDNN exists."""
    choice = (mode or os.environ.get(ENV_VAR) or "auto").lower()
    if choice == "auto":
        return "onednn" if torch.backends.mkldnn.is_available() else "native"
    if choice not in MODES:
        raise ValueError(f"{ENV_VAR}/mode={choice!r} is not one of {('auto',) + MODES}")
    if choice == "onednn" and not torch.backends.mkldnn.is_available():
        raise RuntimeError("LIGHTVLLM_CPU_LINEAR=onednn but this torch was built without oneDNN")
    return choice


def _packable(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (isinstance(module, LinearBase)
            and type(module).apply_linear is LinearBase.apply_linear
            and isinstance(weight, torch.Tensor) and weight.device.type == "cpu"
            and weight.dtype == torch.float32 and weight.dim() == 2)


def _onednn_linear(self: LinearBase, x: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
    bias = self.bias if with_bias else None
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.numel() >= LARGE_BATCH_ROWS * x.shape[-1]:
        return F.linear(x, self.weight, bias)
    packed = self.__dict__.get("packed_weight")
    if packed is None:  # packed at first use, so weights loaded after the pass are seen
        with torch.inference_mode():
            packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), PACK_BATCH_HINT)
        self.__dict__["packed_weight"] = packed
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


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


def pack_linear(module: LinearBase) -> None:
    """Give ``module`` an ``apply_linear`` on a oneDNN-packed copy of its weight (packed now,
    and again at first use after any ``weight_loader`` call)."""
    module.__dict__["packed_weight"] = None
    module.__dict__["apply_linear"] = types.MethodType(_onednn_linear, module)  # popped by unpack
    for param in module.parameters(recurse=False):
        _drop_pack_on_load(module, param)
    _onednn_linear(module, torch.zeros(1, module.weight.shape[1]))


def unpack_linear(module: LinearBase) -> None:
    """Back to ``F.linear`` (drops the packed copy)."""
    module.__dict__.pop("apply_linear", None)
    module.__dict__.pop("packed_weight", None)


@torch.inference_mode()
def process_weights_after_loading(model: nn.Module, mode: str | None = None) -> int:
    """Prepack every plain fp32 CPU linear layer of ``model``; returns how many were packed."""
    mode = resolve_mode(mode)
    packed = 0
    for module in model.modules():
        if not isinstance(module, LinearBase):
            continue
        unpack_linear(module)
        if mode == "onednn" and _packable(module):
            pack_linear(module)
            packed += 1
    if packed:
        logger.info("prepacked %d linear layers for oneDNN", packed)
    return packed
