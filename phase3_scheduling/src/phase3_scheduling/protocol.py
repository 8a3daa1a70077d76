"""The wire format between the scheduler and the workers: one message per step, plain data.

A request's prompt, sampling parameters and first blocks are sent once (``NewRequestData``);
afterwards each step carries only deltas per request (``CachedRequestData``: the tokens the
worker has not seen, the new block ids, how many tokens to run). Workers keep the rest in their
persistent batch. The output is compact arrays (``ModelRunnerOutput``). Every message is a
msgspec ``Struct``: the same objects go to an in-process worker (no encoding), to a subprocess,
a Ray actor or a gRPC service (msgpack bytes; nothing is ever pickled).
"""

from __future__ import annotations

from typing import Any

import msgspec

from .sampling_params import SamplingParams


class WireSamplingParams(msgspec.Struct, array_like=True, omit_defaults=True, frozen=True):
    """What a worker needs to sample a request's tokens (stop strings stay in the front end)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logprobs: int | None = None
    min_tokens: int = 0
    min_tokens_block: list[int] = []  # eos + stop token ids forbidden until min_tokens

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    @classmethod
    def from_params(cls, p: SamplingParams, eos_token_ids: list[int]) -> "WireSamplingParams":
        block = sorted(set(eos_token_ids) | set(p.stop_token_ids or ())) if p.min_tokens else []
        return cls(p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty,
                   p.presence_penalty, p.frequency_penalty, p.seed, p.logprobs, p.min_tokens,
                   block)


class NewRequestData(msgspec.Struct, array_like=True, frozen=True):
    """A request the workers have not seen (first scheduled, or resumed after preemption)."""

    req_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]  # non-empty when resumed after preemption
    params: WireSamplingParams
    block_ids: list[int]
    num_computed_tokens: int  # prefix-cache hits count as computed


class CachedRequestData(msgspec.Struct, array_like=True, frozen=True):
    """A running request's delta since the last step it was in."""

    req_id: str
    new_token_ids: list[int]  # tokens sampled since (the workers append them)
    new_block_ids: list[int]
    num_computed_tokens: int


class SchedulerOutput(msgspec.Struct, array_like=True):
    """One step. ``req_ids[i]`` runs ``num_scheduled_tokens[i]`` tokens; decodes come first."""

    new_requests: list[NewRequestData] = []
    cached_requests: list[CachedRequestData] = []
    req_ids: list[str] = []
    num_scheduled_tokens: list[int] = []
    finished_req_ids: list[str] = []  # since the last step: workers drop their state
    preempted_req_ids: list[str] = []

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(self.num_scheduled_tokens)

    @property
    def is_empty(self) -> bool:
        return not self.req_ids


class SampledLogprobs(msgspec.Struct, array_like=True):
    """Per sampled row: the chosen token's logprob and rank, and the top-k (ids, logprobs)."""

    chosen: list[float]
    ranks: list[int]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]


class ModelRunnerOutput(msgspec.Struct, array_like=True):
    """The requests that sampled a token this step (mid-prompt chunks sample nothing)."""

    req_ids: list[str] = []
    sampled_token_ids: list[int] = []
    logprobs: SampledLogprobs | None = None

    @property
    def sampled(self) -> dict[str, int]:
        return dict(zip(self.req_ids, self.sampled_token_ids))


class RpcRequest(msgspec.Struct, array_like=True):
    """A call of a worker method by name (``collective_rpc``); args are plain msgpack data."""

    method: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}


class RpcReply(msgspec.Struct, array_like=True):
    result: Any = None
    error: str | None = None
    error_type: str | None = None


_ENCODER = msgspec.msgpack.Encoder()
_STEP_DECODER = msgspec.msgpack.Decoder(SchedulerOutput)
_OUTPUT_DECODER = msgspec.msgpack.Decoder(ModelRunnerOutput)


def encode(message: msgspec.Struct) -> bytes:
    return _ENCODER.encode(message)


def decode_step(data: bytes) -> SchedulerOutput:
    return _STEP_DECODER.decode(data)


def decode_output(data: bytes) -> ModelRunnerOutput:
    return _OUTPUT_DECODER.decode(data)
