"""Request validation at add time: every sampling parameter and prompt checked against the model.

A request that passes here cannot break an engine step with its own data: token ids lie in the
vocabulary, integers in the ranges the sampler's tensors can hold, floats are finite, and the
sequence fits both the context and the whole KV cache. Each failure is a typed
``RequestValidationError`` that carries the parameter's name (``param``), so servers map it to a
400 without parsing messages. ``SamplingParams`` runs the model-independent checks when it is
built; ``validate_request`` runs them again (fields may have been changed since) plus the checks
that need the model's ``RequestLimits``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .sampling_params import SamplingParams

SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # what torch.Generator.manual_seed takes, plus n children
MAX_LOGPROBS = 20


class RequestValidationError(ValueError):
    """A request the engine refuses; ``param`` names the offending field (OpenAI's ``param``)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class PromptTooLongError(RequestValidationError):
    """The prompt leaves no room for one output token within ``max_model_len``."""


class RequestTooLargeError(RequestValidationError):
    """The sequence could never fit the KV cache, even with every other request preempted."""


@dataclass(frozen=True)
class RequestLimits:
    """What a request is checked against: the model's vocabulary, context and KV cache."""

    vocab_size: int
    max_model_len: int
    kv_cache_tokens: int  # tokens the whole KV cache holds (one sequence may use all of it)


def _bad(param: str, rule: str, value: Any) -> RequestValidationError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return RequestValidationError(f"{param} must be {rule}, got {shown}", param)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(params: Any, name: str, low: int, high: int | None = None,
               optional: bool = False) -> None:
    value = getattr(params, name)
    if optional and value is None:
        return
    if not _is_int(value) or value < low or (high is not None and value > high):
        rule = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
        raise _bad(name, rule + (" or null" if optional else ""), value)


def _check_float(params: Any, name: str, low: float, high: float | None,
                 low_open: bool = False) -> None:
    value = getattr(params, name)
    too_low = value <= low if low_open else value < low
    if not _is_number(value) or too_low or (high is not None and value > high):
        left = "(" if low_open else "["
        rule = f"a finite number in {left}{low}, {high}]" if high is not None else \
            f"a finite number {'>' if low_open else '>='} {low}"
        raise _bad(name, rule, value)


def check_text(text: Any, param: str) -> None:
    """A string the tokenizer and JSON can take: no lone UTF-16 surrogates."""
    if not isinstance(text, str):
        raise _bad(param, "a string", text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise RequestValidationError(
            f"{param} contains a lone UTF-16 surrogate {text[error.start]!r} at position "
            f"{error.start}; send valid Unicode", param) from None


def check_sampling_params(params: "SamplingParams") -> None:
    """The checks that need no model: types and ranges of every field."""
    _check_int(params, "n", 1)
    _check_float(params, "temperature", 0.0, None)
    _check_float(params, "top_p", 0.0, 1.0, low_open=True)
    if not _is_int(params.top_k) or params.top_k < -1:
        raise _bad("top_k", "-1, 0 (no limit) or a positive integer", params.top_k)
    _check_float(params, "min_p", 0.0, 1.0)
    _check_float(params, "repetition_penalty", 0.0, None, low_open=True)
    _check_float(params, "presence_penalty", -2.0, 2.0)
    _check_float(params, "frequency_penalty", -2.0, 2.0)
    _check_int(params, "seed", SEED_MIN, SEED_MAX, optional=True)
    _check_int(params, "max_tokens", 1, optional=True)
    _check_int(params, "min_tokens", 0)
    if params.max_tokens is not None and params.min_tokens > params.max_tokens:
        raise _bad("min_tokens", f"<= max_tokens ({params.max_tokens})", params.min_tokens)
    _check_int(params, "logprobs", 0, MAX_LOGPROBS, optional=True)
    for name in ("ignore_eos", "skip_special_tokens"):
        if not isinstance(getattr(params, name), bool):
            raise _bad(name, "true or false", getattr(params, name))
    stop = [params.stop] if isinstance(params.stop, str) else params.stop
    if stop is not None and (not isinstance(stop, (list, tuple))
                             or any(not isinstance(s, str) or not s for s in stop)):
        raise _bad("stop", "a non-empty string or a list of them", params.stop)
    for s in stop or []:
        check_text(s, "stop")
    ids = params.stop_token_ids
    if ids is not None and (not isinstance(ids, (list, tuple)) or not all(_is_int(t) for t in ids)):
        raise _bad("stop_token_ids", "a list of integer token ids", ids)


def check_prompt_ids(ids: Sequence[Any], limits: RequestLimits, param: str = "prompt") -> None:
    """Prompt token ids: integers in the vocabulary, at least one, room left for an output."""
    if not ids:
        raise RequestValidationError(f"{param} is empty", param)
    vocab = limits.vocab_size
    for t in ids:
        if not _is_int(t):
            raise _bad(param, "a string or a list of integer token ids", t)
        if not 0 <= t < vocab:
            raise RequestValidationError(f"token id {t} is out of range [0, {vocab})", param)
    if len(ids) >= limits.max_model_len:
        raise PromptTooLongError(
            f"prompt has {len(ids)} tokens, max_model_len is {limits.max_model_len} "
            f"(at least one token must remain for the output)", param)


def check_against_model(params: "SamplingParams", prompt_len: int, limits: RequestLimits) -> None:
    """The checks that need the model: vocabulary ids, top_k, and the KV cache's capacity."""
    vocab = limits.vocab_size
    if params.top_k > vocab:
        raise _bad("top_k", f"<= the vocabulary size {vocab} (or -1/0 for no limit)", params.top_k)
    if params.logprobs is not None and params.logprobs > vocab:
        raise _bad("logprobs", f"<= the vocabulary size {vocab}", params.logprobs)
    for t in params.stop_token_ids or []:
        if not 0 <= t < vocab:
            raise RequestValidationError(
                f"stop_token_ids contains {t}, outside the vocabulary [0, {vocab})",
                "stop_token_ids")
    total = min(prompt_len + (params.max_tokens or limits.max_model_len), limits.max_model_len)
    if total > limits.kv_cache_tokens:
        param = "prompt" if prompt_len > limits.kv_cache_tokens else "max_tokens"
        raise RequestTooLargeError(
            f"the request needs KV cache for {total} tokens ({prompt_len} prompt + up to "
            f"{total - prompt_len} output), more than the whole cache holds "
            f"({limits.kv_cache_tokens} tokens); lower max_tokens or the prompt", param)


def check_context(prompt_len: int, max_tokens: int | None, limits: RequestLimits) -> None:
    """What OpenAI's servers refuse: an explicit max_tokens that overruns the context."""
    limit = limits.max_model_len
    if max_tokens is not None and prompt_len + max_tokens > limit:
        raise RequestValidationError(
            f"this model's maximum context length is {limit} tokens; the prompt has "
            f"{prompt_len} and max_tokens asks for {max_tokens} more", "max_tokens")


def validate_request(prompt_ids: Sequence[Any], params: "SamplingParams",
                     limits: RequestLimits) -> None:
    """Everything the engine checks before a request may reach a step (``top_k=-1`` set after
    construction is normalised to 0, as ``SamplingParams`` does)."""
    if params.top_k == -1:
        params.top_k = 0
    check_prompt_ids(prompt_ids, limits)
    check_sampling_params(params)
    check_against_model(params, len(prompt_ids), limits)
