"""The worker's persistent batch: what it remembers about each running request between steps,
so that a step message only carries deltas (new tokens, new block ids, token counts)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..protocol import CachedRequestData, NewRequestData, SchedulerOutput, WireSamplingParams


class WorkerStateError(RuntimeError):
    """A step refers to a request this worker does not hold (the protocol was broken)."""


@dataclass
class CachedRequestState:
    req_id: str
    row: int  # row of the block table
    prompt_len: int
    token_ids: list[int]  # prompt + generated tokens the scheduler has sent
    num_computed_tokens: int
    num_blocks: int
    params: WireSamplingParams
    generator: torch.Generator | None = None

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len:]


class InputBatch:
    """Rows of a block table (numpy, host side) and the request states behind them."""

    def __init__(self, max_num_seqs: int, max_blocks_per_seq: int, device: torch.device):
        self.device = device
        self.block_table = np.zeros((max_num_seqs, max_blocks_per_seq), dtype=np.int32)
        self.requests: dict[str, CachedRequestState] = {}
        self._free_rows = list(range(max_num_seqs - 1, -1, -1))

    def __len__(self) -> int:
        return len(self.requests)

    def update(self, step: SchedulerOutput) -> None:
        """Apply a step's deltas: drop finished/preempted, add new, extend running requests."""
        for rid in step.finished_req_ids + step.preempted_req_ids:
            self.remove(rid)
        for new in step.new_requests:
            self.add(new)
        for cached in step.cached_requests:
            self.extend(cached)

    def add(self, new: NewRequestData) -> None:
        if new.req_id in self.requests:
            self.remove(new.req_id)  # resumed after a preemption it was not told about
        row = self._free_rows.pop()
        state = CachedRequestState(
            new.req_id, row, len(new.prompt_token_ids),
            list(new.prompt_token_ids) + list(new.output_token_ids), new.num_computed_tokens,
            0, new.params, self._generator(new.params))
        self.requests[new.req_id] = state
        self._append_blocks(state, new.block_ids)

    def extend(self, cached: CachedRequestData) -> None:
        state = self.requests.get(cached.req_id)
        if state is None:
            raise WorkerStateError(f"step refers to request {cached.req_id!r} this worker does not hold")
        state.token_ids.extend(cached.new_token_ids)
        state.num_computed_tokens = cached.num_computed_tokens
        self._append_blocks(state, cached.new_block_ids)

    def remove(self, req_id: str) -> None:
        state = self.requests.pop(req_id, None)
        if state is not None:
            self._free_rows.append(state.row)

    def _append_blocks(self, state: CachedRequestState, block_ids: list[int]) -> None:
        if block_ids:
            end = state.num_blocks + len(block_ids)
            if end > self.block_table.shape[1]:
                raise WorkerStateError(f"request {state.req_id!r} needs {end} blocks, a row holds "
                                       f"{self.block_table.shape[1]}")
            self.block_table[state.row, state.num_blocks:end] = block_ids
            state.num_blocks = end

    def _generator(self, params: WireSamplingParams) -> torch.Generator | None:
        if params.seed is None or params.greedy:
            return None
        return torch.Generator(device=self.device).manual_seed(params.seed)
