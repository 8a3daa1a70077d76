"""What completions and chat share: the server state, prompt checks, sampling parameters, running
a request through ``AsyncLLMEngine`` with metrics and clean aborts, logprob rendering and SSE.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncGenerator, Callable, Sequence, TypeVar

import msgspec

from phase3_scheduling import (AsyncLLMEngine, EngineDeadError, EngineStepError, RequestLimits,
                               RequestOutput, RequestValidationError, SamplingParams)
from phase3_scheduling.core_client import AsyncMPClient
from phase3_scheduling.validation import (check_against_model, check_context, check_prompt_ids,
                                          check_text)

from .errors import APIError, ServerShuttingDown, internal_error
from .metrics import ServerMetrics

logger = logging.getLogger(__name__)
LOGPROB_FLOOR = -9999.0  # -inf is not JSON; vLLM clamps the same way
T = TypeVar("T")


@dataclass
class AdmissionLimits:
    """Caps on fan-out (vLLM-like defaults): sequences one request may start (prompts x n) and
    sequences queued or running in the engine at once; beyond them 400 and 429."""

    max_seqs_per_request: int = 256
    max_queued_seqs: int = 4096


class ClientDisconnected(APIError):
    """The client left before its non-streaming response was ready (nginx's 499)."""

    def __init__(self) -> None:
        super().__init__("the client closed the connection", 499, code="client_closed_request")


@dataclass
class ServerState:
    """Everything a handler needs; ``engine`` is None until the model has loaded."""

    model_name: str
    metrics: ServerMetrics
    engine: AsyncLLMEngine | AsyncMPClient | None = None
    load_error: BaseException | None = None
    draining: bool = False
    active: set[str] = field(default_factory=set)
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    num_seqs: int = 0  # sequences this server has in the engine (queued or running)
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(
        max_workers=4, thread_name_prefix="lightvllm-tokenizer"))
    on_load_error: Callable[[], None] | None = None  # make_server's: stop serving

    @property
    def ready(self) -> bool:
        return self.engine is not None and not self.draining and self.engine.errored is None

    @property
    def tokenizer(self):
        return self.engine.tokenizer if self.engine else None

    @property
    def loaded_engine(self) -> AsyncLLMEngine | AsyncMPClient:
        """The engine, where a request is served only once it is ready (``Gate``)."""
        assert self.engine is not None, "the model has not loaded yet"
        return self.engine

    @property
    def limits(self) -> RequestLimits:
        return self.loaded_engine.request_limits

    @property
    def max_model_len(self) -> int:
        return self.limits.max_model_len

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run tokenizer work (CPU-bound, seconds for megabytes) in the pool, not the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def admit(self, num_seqs: int, param: str = "n") -> None:
        """Refuse a request whose sequences exceed the per-request or the server-wide cap."""
        cap = self.admission
        if num_seqs > cap.max_seqs_per_request:
            raise APIError(f"the request asks for {num_seqs} sequences (prompts x n); the limit "
                           f"is {cap.max_seqs_per_request}", 400, param=param,
                           code="too_many_sequences")
        if self.num_seqs + num_seqs > cap.max_queued_seqs:
            raise APIError(f"the server has {self.num_seqs} sequences queued or running and takes "
                           f"at most {cap.max_queued_seqs}; retry later", 429,
                           code="rate_limit_exceeded")

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(f"the model {name!r} does not exist; this server serves "
                           f"{self.model_name!r}", 400, param="model", code="model_not_found")

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
    """SamplingParams from a request, checked against the model as the engine will check it."""
    if getattr(req, "logit_bias", None):
        raise APIError("logit_bias is not supported", 400, param="logit_bias")
    if req.stop and state.tokenizer is None:
        raise APIError("stop strings need a tokenizer; this server has none (use stop_token_ids)",
                       400, param="stop")
    try:
        check_context(prompt_len, max_tokens, state.limits)
        params = SamplingParams(
            n=req.n, temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0,
            min_p=req.min_p or 0.0, repetition_penalty=req.repetition_penalty or 1.0,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0, seed=req.seed, max_tokens=max_tokens,
            min_tokens=req.min_tokens, stop=req.stop,
            stop_token_ids=req.stop_token_ids, ignore_eos=req.ignore_eos, logprobs=logprobs,
            skip_special_tokens=req.skip_special_tokens)
        check_against_model(params, prompt_len, state.limits)
    except RequestValidationError as error:
        raise invalid(error) from None
    return params


def invalid(error: RequestValidationError) -> APIError:
    code = "context_length_exceeded" if "context length" in error.message or \
        "max_model_len" in error.message else "invalid_value"
    return APIError(error.message, 400, param=error.param, code=code)


async def encode_prompt(state: ServerState, prompt: str | Sequence[int],
                        param: str = "prompt") -> list[int]:
    """Token ids of a prompt (tokenized off the event loop), checked against the vocabulary
    and the context length."""
    try:
        if isinstance(prompt, str):
            if state.tokenizer is None:
                raise APIError("this server has no tokenizer: send the prompt as token ids", 400,
                               param=param)
            check_text(prompt, param)
            return await state.off_loop(_encode_checked, state, prompt, param)
        ids = list(prompt)
        check_prompt_ids(ids, state.limits, param)
    except RequestValidationError as error:
        raise invalid(error) from None
    return ids


def _encode_checked(state: ServerState, text: str, param: str) -> list[int]:
    """Tokenize and check in the worker thread: a megabyte prompt's ids never touch the loop."""
    ids = state.tokenizer.encode(text)
    check_prompt_ids(ids, state.limits, param)
    return ids


async def generate(state: ServerState, prompt_ids: list[int], params: SamplingParams,
                   request_id: str) -> AsyncGenerator[RequestOutput, None]:
    """The engine's outputs for one prompt, timed; closing this aborts the request."""
    timer = state.metrics.timer()
    state.active.add(request_id)
    state.num_seqs += params.n
    stream = state.loaded_engine.generate(prompt_ids, params, request_id)
    last: RequestOutput | None = None
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
        state.num_seqs -= params.n
        await stream.aclose()
        reasons = ([o.finish_reason for o in last.outputs]
                   if last is not None and last.finished else [])
        timer.finish(reasons[0] if reasons else None)


async def final_outputs(state: ServerState, streams: list[AsyncGenerator], raw_request) -> list:
    """The last output of every stream; a client that disconnects first aborts them all."""
    finals: list = [None] * len(streams)

    async def consume() -> None:
        async for i, out in merge(streams):
            finals[i] = out

    task = asyncio.ensure_future(consume())
    if raw_request is None:
        await task
        return finals
    watcher = asyncio.ensure_future(_disconnected(raw_request))
    await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        watcher.cancel()
        task.result()
        return finals
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    logger.info("client left %s before its response; its requests were aborted",
                raw_request.url.path)
    raise ClientDisconnected()


async def _disconnected(raw_request) -> None:
    """Return once the ASGI receive channel reports that the client went away."""
    while (await raw_request.receive())["type"] != "http.disconnect":
        pass


async def merge(streams: list[AsyncGenerator[T, None]]) -> AsyncGenerator[tuple[int, T], None]:
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

    async def pump(i: int, stream: AsyncGenerator[T, None]) -> None:
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


_SSE_JSON = msgspec.json.Encoder()  # compact JSON, UTF-8 as is: ~0.3 µs a chunk (json.dumps ~3.3)


def sse(payload: dict) -> bytes:
    """One server-sent event carrying ``payload`` as JSON (one per streamed token and choice: the
    encoder is on the hot path)."""
    return b"data: " + _SSE_JSON.encode(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def stream_error(error: BaseException) -> tuple[str, int]:
    """Message and status for an error that ends an open stream (never an internal detail)."""
    if isinstance(error, APIError):
        return error.message, error.status
    if isinstance(error, RequestValidationError):
        return error.message, 400
    if isinstance(error, EngineDeadError):
        return "the engine stopped after an error; the server needs a restart", 503
    reference = internal_error(error, "an open stream")
    return reference.message, 500
