"""What a pipeline-parallel stage needs from the model, with no dependency on phase 4:
a placeholder for the layers another stage owns, and the activations passed between stages.

``LlamaModel(layer_range=(start, end))`` builds real layers only for ``start <= i < end``; the
first stage (``start == 0``) also owns the embedding, the last (``end == num_layers``) the final
norm and the LM head. Every other position holds a ``PPMissingLayer`` (vLLM's name), so parameter
names stay those of the full model (``model.layers.7...``) and checkpoint names map unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class PPMissingLayer(nn.Module):
    """Stands in for a module another pipeline stage owns: no parameters, never called."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("this module belongs to another pipeline stage and was not built here")


@dataclass
class IntermediateTensors:
    """The residual stream between two stages: the last layer's output and the running residual
    (both ``[num_tokens, hidden]``); the next stage's first layer fuses their add into its norm."""

    hidden_states: torch.Tensor
    residual: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"hidden_states": self.hidden_states, "residual": self.residual}


def check_layer_range(layer_range: tuple[int, int] | None, num_layers: int) -> tuple[int, int]:
    """``(start, end)`` with ``0 <= start < end <= num_layers`` (default: every layer)."""
    if layer_range is None:
        return 0, num_layers
    start, end = layer_range
    if not 0 <= start < end <= num_layers:
        raise ValueError(
            f"layer range [{start}, {end}) is not a non-empty range inside the model's "
            f"{num_layers} layers"
        )
    return start, end
