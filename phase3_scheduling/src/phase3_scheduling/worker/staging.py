"""One pinned host buffer per step, with named views, copied to the device in one transfer.

The runner writes a step's ``input_ids``, ``positions``, ``slot_mapping``, ``seq_lens`` and
``query_start_loc`` into views of a single int64 buffer, copies it to the device in one
non-blocking transfer, then scatters it into the persistent device tensors that the model (and
any captured CUDA graph) reads. The block table goes in a second transfer. Three index lists
ride along and are read straight from the staged copy: ``sample_index`` (the token rows whose
logits are sampled), ``prev_dst``/``prev_src`` (input positions whose token is the previous
step's sample, still on the device under async scheduling, and its row there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

FIELDS = ("input_ids", "positions", "slot_mapping", "seq_lens", "query_start_loc")
INDEX_FIELDS = ("sample_index", "prev_dst", "prev_src")


@dataclass
class DeviceInputs:
    """The persistent device tensors a step reads (sliced per step, never reallocated)."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    seq_lens: torch.Tensor
    query_start_loc: torch.Tensor
    block_tables: torch.Tensor


class StepStaging:
    def __init__(self, max_tokens: int, max_seqs: int, max_blocks: int, device: torch.device):
        pin = device.type == "cuda"
        self.device = device
        self.host = torch.zeros(3 * max_tokens + 5 * max_seqs + 1, dtype=torch.int64,
                                pin_memory=pin)
        self.host_np = self.host.numpy()
        self.staged = torch.zeros_like(self.host, device=device)
        self.table_host = torch.zeros(max_seqs, max_blocks, dtype=torch.int32, pin_memory=pin)
        self.table_np = self.table_host.numpy()
        self.dev = DeviceInputs(
            input_ids=torch.zeros(max_tokens, dtype=torch.long, device=device),
            positions=torch.zeros(max_tokens, dtype=torch.long, device=device),
            slot_mapping=torch.full((max_tokens,), -1, dtype=torch.long, device=device),
            seq_lens=torch.ones(max_seqs, dtype=torch.int32, device=device),
            query_start_loc=torch.zeros(max_seqs + 1, dtype=torch.int32, device=device),
            block_tables=torch.zeros(max_seqs, max_blocks, dtype=torch.int32, device=device))
        self._copied: torch.cuda.Event | None = None
        self._layout: dict[str, slice] = {}

    def views(self, num_tokens: int, num_rows: int, num_sampled: int = 0,
              num_prev: int = 0) -> dict[str, np.ndarray]:
        """Host views for a step of ``num_tokens`` (padded) tokens and ``num_rows`` rows,
        ``num_sampled`` sampled rows and ``num_prev`` tokens taken from the previous step's
        samples; waits until the previous step's copy out of the pinned buffer is done."""
        if self._copied is not None:
            self._copied.synchronize()
        sizes = (num_tokens, num_tokens, num_tokens, num_rows, num_rows + 1, num_sampled,
                 num_prev, num_prev)
        start, self._layout = 0, {}
        for name, size in zip(FIELDS + INDEX_FIELDS, sizes):
            self._layout[name] = slice(start, start + size)
            start += size
        return {name: self.host_np[s] for name, s in self._layout.items()}

    def block_table_view(self, num_rows: int) -> np.ndarray:
        return self.table_np[:num_rows]

    def index(self, name: str) -> torch.Tensor:
        """One of ``INDEX_FIELDS`` on the device (valid after ``copy_to_device``)."""
        return self.staged[self._layout[name]]

    def copy_to_device(self, num_rows: int) -> None:
        """One host->device copy of the scalars and one of the block table, then device-side
        scatter into the persistent tensors."""
        end = self._layout[INDEX_FIELDS[-1]].stop
        staged = self.staged[:end]
        staged.copy_(self.host[:end], non_blocking=True)
        self.dev.block_tables[:num_rows].copy_(self.table_host[:num_rows], non_blocking=True)
        if self.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()
        for name in FIELDS:
            s = self._layout[name]
            target = getattr(self.dev, name)
            target[: s.stop - s.start].copy_(staged[s])
