"""vLLM's ``CustomOp`` pattern: a layer picks its kernel implementation once, at construction.

The choice (``native``, ``cpp`` or ``triton``) comes from the ``impl`` argument, else the env var
``LIGHTVLLM_KERNEL_IMPL``, else the best one available on the device the layer is built on
(see ``phase1_kernels.ops.resolve_impl``). Notebooks force each in turn to compare them.
"""

from __future__ import annotations

import logging
import torch
from torch import nn

from . import ops

logger = logging.getLogger(__name__)


class CustomOp(nn.Module):
    def __init__(self, impl: str | None = None, device: torch.device | str | None = None):
        super().__init__()
        device = torch.device(device) if device is not None else torch.get_default_device()
        self.impl = ops.resolve_impl(impl, device)
        self.ops = ops.get_ops(self.impl)

    def extra_repr(self) -> str:
        return f"impl={self.impl}"
