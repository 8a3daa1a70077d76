"""The front end's half before the engine core: prompt -> token ids, checked against the model,
and one ``EngineCoreRequest`` per sample (``n > 1`` fans out into children ``id#i``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from shared.tokenizer import Tokenizer

from .core_messages import EngineCoreRequest
from .sampling_params import SamplingParams
from .validation import (RequestLimits, RequestValidationError, check_prompt_ids, check_text,
                         validate_request)


@dataclass(frozen=True)
class ModelLimits:
    """What the front end must know about the engine to check a request before sending it."""

    vocab_size: int
    max_model_len: int
    num_blocks: int
    block_size: int
    eos_token_ids: list[int]

    @property
    def request_limits(self) -> RequestLimits:
        """What validation checks a request against (block 0 is the reserved null block)."""
        return RequestLimits(self.vocab_size, self.max_model_len,
                             (self.num_blocks - 1) * self.block_size)


class InputProcessor:
    def __init__(self, tokenizer: Tokenizer | None, limits: ModelLimits):
        self.tokenizer = tokenizer
        self.limits = limits

    def tokenize_prompt(self, prompt: str | Sequence[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise RequestValidationError("this engine has no tokenizer: pass prompt token ids",
                                             "prompt")
            check_text(prompt, "prompt")
            return prompt, self.tokenizer.encode(prompt)
        ids = list(prompt)
        check_prompt_ids(ids, self.limits.request_limits)
        return None, ids

    def validate_prompt(self, ids: list[int]) -> None:
        check_prompt_ids(ids, self.limits.request_limits)

    def core_requests(self, request_id: str, ids: list[int], params: SamplingParams,
                      arrival_time: float | None = None) -> list[EngineCoreRequest]:
        """Validate the request against the model, then build one core request per sample."""
        limits = self.limits
        validate_request(ids, params, limits.request_limits)
        arrival = arrival_time or time.monotonic()
        if params.n == 1:
            return [EngineCoreRequest.build(request_id, ids, params, limits.eos_token_ids, arrival)]
        return [EngineCoreRequest.build(f"{request_id}#{i}", ids, params.child(i),
                                        limits.eos_token_ids, arrival) for i in range(params.n)]
