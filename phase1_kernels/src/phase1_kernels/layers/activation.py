"""SiLU-and-multiply: the activation of LLaMA's gated MLP, one fused kernel."""

from __future__ import annotations

import logging
import torch

from ..custom_op import CustomOp

logger = logging.getLogger(__name__)


class SiluAndMul(CustomOp):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., 2d] -> [..., d]``: ``silu(gate) * up`` with gate and up side by side."""
        return self.ops.silu_and_mul(x)
