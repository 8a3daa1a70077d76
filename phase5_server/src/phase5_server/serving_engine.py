"""What completions and chat share: the server state, prompt checks, sampling parameters, running
a request through ``AsyncLLMEngine`` with metrics and clean aborts, logprob rendering and SSE.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator, Sequence

from phase3_scheduling import (AsyncLLMEngine, EngineDeadError, EngineStepError, SamplingParams,
                               SamplingParamsError)

from .errors import APIError
from .metrics import ServerMetrics

LOGPROB_FLOOR = -9999.0  # -inf is not JSON; vLLM clamps the same way


class ServerShuttingDown(RuntimeError):
    """Delivered into every open stream when the server stops."""


@dataclass
class ServerState:
    """Everything a handler needs; ``engine`` is None until the model has loaded."""

    model_name: str
    metrics: ServerMetrics
    engine: AsyncLLMEngine | None = None
    load_error: BaseException | None = None
    draining: bool = False
    active: set[str] = field(default_factory=set)

    @property
    def ready(self) -> bool:
        return self.engine is not None and not self.draining and self.engine.errored is None

    @property
    def tokenizer(self):
        return self.engine.tokenizer if self.engine else None

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(f"the model {name!r} does not exist; this server serves {self.model_name!r}",
                           400, param="model", code="model_not_found")

    def shut_down_streams(self, message: str = "the server is shutting down") -> None:
        """Stop taking requests and end every open stream with an error (called on Ctrl-C)."""
        self.draining = True
        engine = self.engine
        if engine is None:
            return
        for rid in list(self.active):
            engine.fail_request(rid, ServerShuttingDown(message))


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def sampling_params(req, max_tokens: int | None, logprobs: int | None, prompt_len: int,
                    state: ServerState) -> SamplingParams:
    """SamplingParams from a request, refusing what the engine cannot honour."""
    if getattr(req, "logit_bias", None):
        raise APIError("logit_bias is not supported", 400, param="logit_bias")
    if req.stop and state.tokenizer is None:
        raise APIError("stop strings need a tokenizer; this server has none (use stop_token_ids)",
                       400, param="stop")
    limit = state.max_model_len
    if max_tokens is not None and prompt_len + max_tokens > limit:
        raise APIError(f"this model's maximum context length is {limit} tokens; the prompt has "
                       f"{prompt_len} and max_tokens asks for {max_tokens} more", 400,
                       param="max_tokens", code="context_length_exceeded")
    try:
        return SamplingParams(
            n=req.n, temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0,
            min_p=req.min_p or 0.0, repetition_penalty=req.repetition_penalty or 1.0,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0, seed=req.seed, max_tokens=max_tokens,
            min_tokens=min(req.min_tokens, max_tokens or req.min_tokens), stop=req.stop,
            stop_token_ids=req.stop_token_ids, ignore_eos=req.ignore_eos, logprobs=logprobs,
            skip_special_tokens=req.skip_special_tokens)
    except SamplingParamsError as error:
        raise APIError(str(error), 400, param=str(error).split(" ", 1)[0]) from None


def encode_prompt(state: ServerState, prompt: str | Sequence[int], param: str = "prompt") -> list[int]:
    """Token ids of a prompt, checked against the vocabulary and the context length."""
    if isinstance(prompt, str):
        if state.tokenizer is None:
            raise APIError("this server has no tokenizer: send the prompt as token ids", 400,
                           param=param)
        ids = state.tokenizer.encode(prompt)
    else:
        ids = list(prompt)
    try:
        state.engine.validate_prompt(ids)
    except ValueError as error:
        code = "context_length_exceeded" if "max_model_len" in str(error) else "invalid_value"
        raise APIError(str(error), 400, param=param, code=code) from None
    return ids


async def generate(state: ServerState, prompt_ids: list[int], params: SamplingParams,
                   request_id: str) -> AsyncIterator:
    """The engine's outputs for one prompt, timed; closing this aborts the request."""
    timer = state.metrics.timer()
    state.active.add(request_id)
    stream = state.engine.generate(prompt_ids, params, request_id)
    last = None
    try:
        async for out in stream:
            timer.on_tokens(sum(len(o.token_ids) for o in out.outputs))
            last = out
            yield out
    except EngineDeadError as error:  # 503 for streams and whole responses alike
        raise APIError(str(error), 503, code="engine_unavailable") from None
    except EngineStepError as error:
        raise APIError(str(error), 500, code="engine_step_failed") from None
    finally:
        state.active.discard(request_id)
        await stream.aclose()
        reasons = [o.finish_reason for o in last.outputs] if last is not None and last.finished else []
        timer.finish(reasons[0] if reasons else None)


async def merge(streams: list[AsyncIterator]) -> AsyncIterator[tuple[int, object]]:
    """Interleave several async iterators as ``(index, item)``; closing cancels them all."""
    if len(streams) == 1:
        try:
            async for item in streams[0]:
                yield 0, item
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, stream: AsyncIterator) -> None:
        try:
            async for item in stream:
                queue.put_nowait((i, item))
        except BaseException as error:  # forwarded to the consumer (cancellation included)
            queue.put_nowait((i, error))
            if isinstance(error, asyncio.CancelledError):
                raise
        finally:
            await stream.aclose()
            queue.put_nowait((i, done))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def token_text(state: ServerState, token_id: int) -> str:
    tok = state.tokenizer
    if tok is None:
        return f"token_id:{token_id}"
    return tok.decode([token_id], skip_special_tokens=False)


def clamp(logprob: float) -> float:
    return max(logprob, LOGPROB_FLOOR)


def top_entries(entry: dict, k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely (token id, logprob) of one position, best first."""
    ranked = sorted(((lp.rank, tid, lp.logprob) for tid, lp in entry.items() if lp.rank <= k))
    return [(tid, lp) for _, tid, lp in ranked[:k]]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def stream_error(error: BaseException) -> tuple[str, int]:
    """Message and status for an error that ends an open stream."""
    if isinstance(error, APIError):
        return error.message, error.status
    if isinstance(error, (ServerShuttingDown, EngineDeadError)):
        return str(error), 503
    if isinstance(error, EngineStepError):
        return str(error), 500
    if isinstance(error, ValueError):
        return str(error), 400
    return f"engine error: {error}", 500
