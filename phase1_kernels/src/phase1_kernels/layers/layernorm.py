"""RMSNorm, with the residual add fused in when a residual is passed (vLLM's convention)."""

from __future__ import annotations

import logging
import torch
from torch import nn

from ..custom_op import CustomOp

logger = logging.getLogger(__name__)


class RMSNorm(CustomOp):
    def __init__(self, hidden_size: int, eps: float = 1e-6, impl: str | None = None):
        super().__init__(impl)
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size))

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``norm(x)``; or, with ``residual``, ``(norm(x + residual), x + residual)`` in one pass
        (the compiled kernels overwrite ``x`` and ``residual`` in place)."""
        if residual is None:
            return self.ops.rms_norm(x, self.weight, self.eps)
        return self.ops.fused_add_rms_norm(x, residual, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, impl={self.impl}"
