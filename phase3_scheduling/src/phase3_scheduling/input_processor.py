"""The front end's half before the engine core: prompt -> token ids, checked against the model,
and one ``EngineCoreRequest`` per sample (``n > 1`` fans out into children ``id#i``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from shared.tokenizer import Tokenizer

from .core_messages import EngineCoreRequest
from .engine_core import check_fits_cache
from .sampling_params import SamplingParams


class PromptTooLongError(ValueError):
    pass


class InvalidPromptError(ValueError):
    pass


@dataclass(frozen=True)
class ModelLimits:
    """What the front end must know about the engine to check a request before sending it."""

    vocab_size: int
    max_model_len: int
    num_blocks: int
    block_size: int
    eos_token_ids: list[int]


class InputProcessor:
    def __init__(self, tokenizer: Tokenizer | None, limits: ModelLimits):
        self.tokenizer = tokenizer
        self.limits = limits

    def tokenize_prompt(self, prompt: str | Sequence[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidPromptError("this engine has no tokenizer: pass prompt token ids")
            return prompt, self.tokenizer.encode(prompt)
        ids = list(prompt)
        if any(not isinstance(t, int) or isinstance(t, bool) for t in ids):
            raise InvalidPromptError("a prompt must be a string or a list of token ids (integers)")
        return None, ids

    def validate_prompt(self, ids: list[int]) -> None:
        if not ids:
            raise InvalidPromptError("the prompt is empty")
        vocab, max_len = self.limits.vocab_size, self.limits.max_model_len
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise InvalidPromptError(f"token id {bad[0]} is out of range [0, {vocab})")
        if len(ids) >= max_len:
            raise PromptTooLongError(
                f"prompt has {len(ids)} tokens, max_model_len is {max_len} "
                f"(at least one token must remain for the output)")

    def core_requests(self, request_id: str, ids: list[int], params: SamplingParams,
                      arrival_time: float | None = None) -> list[EngineCoreRequest]:
        """Validate the request against the model, then build one core request per sample."""
        limits = self.limits
        self.validate_prompt(ids)
        check_fits_cache(len(ids), params.max_tokens, limits.num_blocks, limits.block_size,
                         limits.max_model_len)
        arrival = arrival_time or time.monotonic()
        if params.n == 1:
            return [EngineCoreRequest.build(request_id, ids, params, limits.eos_token_ids, arrival)]
        return [EngineCoreRequest.build(f"{request_id}#{i}", ids, params.child(i),
                                        limits.eos_token_ids, arrival) for i in range(params.n)]
