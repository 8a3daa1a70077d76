"""``SamplingParams``: how to pick each next token and when to stop (vLLM's names)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .validation import SEED_MIN, RequestValidationError, check_sampling_params

logger = logging.getLogger(__name__)


class SamplingParamsError(RequestValidationError):
    """A sampling parameter is out of range; ``param`` names it, the message gives its limit."""


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no limit
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16  # None: up to the model's context
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None  # top-k logprobs returned per generated token
    skip_special_tokens: bool = True
    _stop: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.top_k == -1:
            self.top_k = 0
        try:
            check_sampling_params(self)
        except RequestValidationError as error:
            raise SamplingParamsError(error.message, error.param) from None
        self._stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])

    @property
    def stop_strings(self) -> list[str]:
        return self._stop

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    def child(self, index: int) -> "SamplingParams":
        """Parameters of the ``index``-th of ``n`` samples: one sequence, its own seed."""
        seed = None if self.seed is None else (self.seed + index - SEED_MIN) % 2**64 + SEED_MIN
        kwargs = {f: getattr(self, f) for f in self.__dataclass_fields__ if not f.startswith("_")}
        return SamplingParams(**{**kwargs, "n": 1, "seed": seed})
