"""Checkpoint tensors read on demand: a ``LazyTensor`` knows its shape but reads bytes from the
safetensors file only for the range asked for (``narrow``) or all of it (``materialize``).

A tensor-parallel rank (phase 4) narrows each weight to its shard before reading, so it never
holds a full weight in memory. ``read_stats`` counts what was actually read, so a test or a
notebook can show it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ReadStats:
    """Tensors and bytes read from checkpoint files through ``LazyTensor`` in this process."""

    tensors: int = 0
    bytes: int = 0

    def reset(self) -> None:
        self.tensors = self.bytes = 0


read_stats = ReadStats()


class LazyTensor:
    """One tensor of an open safetensors file (a ``safe_open(...).get_slice(name)`` handle);
    valid while the file is open."""

    def __init__(self, handle_slice, name: str):
        self._slice = handle_slice
        self.name = name
        self.shape = torch.Size(handle_slice.get_shape())

    def dim(self) -> int:
        return len(self.shape)

    def _read(self, index: tuple[slice, ...]) -> torch.Tensor:
        tensor = self._slice[index]
        read_stats.tensors += 1
        read_stats.bytes += tensor.numel() * tensor.element_size()
        return tensor

    def narrow(self, dim: int, start: int, length: int) -> torch.Tensor:
        """Read only ``[start, start + length)`` along ``dim`` (like ``Tensor.narrow``)."""
        if not 0 <= start <= start + length <= self.shape[dim]:
            raise ValueError(
                f"{self.name}: range [{start}, {start + length}) of dim {dim} is outside its "
                f"shape {tuple(self.shape)}"
            )
        index = (slice(None),) * dim + (slice(start, start + length),)
        return self._read(index)

    def materialize(self) -> torch.Tensor:
        return self._read((slice(None),) * max(1, self.dim()))

    def __repr__(self) -> str:
        return f"LazyTensor({self.name!r}, shape={tuple(self.shape)})"


def materialize(tensor: torch.Tensor | LazyTensor) -> torch.Tensor:
    """The tensor itself, or a lazy one read in full."""
    return tensor.materialize() if isinstance(tensor, LazyTensor) else tensor
