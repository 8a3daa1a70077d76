"""``POST /v1/completions``: one or many prompts (text or token ids), streamed or not."""

from __future__ import annotations

from typing import AsyncGenerator

from .errors import APIError, sse_error
from .protocol import CompletionRequest
from .serving_engine import (SSE_DONE, ServerState, clamp, encode_prompt, final_outputs, generate,
                             merge, new_id, now, sampling_params, sse, stream_error, token_text,
                             top_entries, usage)


def _prompts(prompt) -> list:
    """The request's prompts as a list of (text or token-id list)."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError("prompt must not be empty", 400, param="prompt")
    if isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)


class _Logprobs:
    """OpenAI's legacy completion logprobs (tokens, token_logprobs, top_logprobs, text_offset)."""

    def __init__(self, state: ServerState, k: int):
        self.state, self.k = state, k

    def render(self, token_ids: list[int], entries: list[dict], offset: int) -> dict:
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                "text_offset": []}
        for tid, entry in zip(token_ids, entries):
            text = token_text(self.state, tid)
            out["tokens"].append(text)
            out["token_logprobs"].append(clamp(entry[tid].logprob))
            out["top_logprobs"].append({token_text(self.state, t): clamp(lp)
                                        for t, lp in top_entries(entry, self.k)})
            out["text_offset"].append(offset)
            offset += len(text)
        return out


async def create_completion(state: ServerState, req: CompletionRequest, raw_request=None):
    state.check_model(req.model)
    if req.suffix:
        raise APIError("suffix is not supported", 400, param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise APIError("best_of must equal n (no server-side ranking)", 400, param="best_of")
    if req.echo and req.logprobs is not None:
        raise APIError("echo with logprobs (prompt logprobs) is not supported", 400, param="echo")
    prompts = _prompts(req.prompt)
    state.admit(len(prompts) * req.n, "n" if len(prompts) == 1 else "prompt")
    texts, ids = [], []
    for i, p in enumerate(prompts):
        param = "prompt" if len(prompts) == 1 else f"prompt.{i}"
        if not isinstance(p, str) and any(not isinstance(t, int) for t in p):
            raise APIError("a prompt is a string or a list of token ids", 400, param=param)
        ids.append(await encode_prompt(state, p, param))
        texts.append(p if isinstance(p, str) else None)
    params = [sampling_params(req, req.max_tokens, req.logprobs, len(p), state) for p in ids]
    state.admit(len(prompts) * req.n, "n" if len(prompts) == 1 else "prompt")  # others came in
    cid, created = new_id("cmpl"), now()
    streams = [generate(state, p, sp, f"{cid}-{i}") for i, (p, sp) in enumerate(zip(ids, params))]
    echo = [(t if t is not None else await _decode(state, p)) if req.echo else ""
            for t, p in zip(texts, ids)]
    logprobs = _Logprobs(state, req.logprobs) if req.logprobs is not None else None
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _stream(state, req, cid, created, streams, ids, echo, logprobs, include_usage)
    finals = await final_outputs(state, streams, raw_request)
    choices, completion_tokens = [], 0
    for i, out in enumerate(finals):
        for o in out.outputs:
            completion_tokens += len(o.token_ids)
            choices.append({
                "index": i * req.n + o.index, "text": echo[i] + o.text,
                "logprobs": (logprobs.render(o.token_ids, o.logprobs, len(echo[i]))
                             if logprobs else None),
                "finish_reason": o.finish_reason, "stop_reason": o.stop_reason})
    choices.sort(key=lambda c: c["index"])
    return {"id": cid, "object": "text_completion", "created": created, "model": state.model_name,
            "choices": choices, "usage": usage(sum(len(p) for p in ids), completion_tokens)}


async def _decode(state: ServerState, ids: list[int]) -> str:
    return await state.off_loop(state.tokenizer.decode, ids) if state.tokenizer is not None else ""


async def _stream(state: ServerState, req: CompletionRequest, cid: str, created: int, streams,
                  ids: list[list[int]], echo: list[str], logprobs: _Logprobs | None,
                  include_usage: bool) -> AsyncGenerator[bytes, None]:
    sent: dict[int, tuple[int, int]] = {}  # choice index -> (chars sent, tokens sent)
    finished: set[int] = set()
    base = {"id": cid, "object": "text_completion", "created": created, "model": state.model_name}
    completion_tokens = 0
    merged = merge(streams)
    try:
        async for i, out in merged:
            for o in out.outputs:
                index = i * req.n + o.index
                if index in finished:
                    continue
                chars, tokens = sent.get(index, (0, 0))
                new_tokens = len(o.token_ids) - tokens
                if new_tokens <= 0 and o.finish_reason is None:
                    continue
                text = o.text[chars:] if len(o.text) > chars else ""
                prefix = echo[i] if index not in sent else ""
                choice = {"index": index, "text": prefix + text, "logprobs": None,
                          "finish_reason": o.finish_reason, "stop_reason": o.stop_reason}
                if logprobs is not None:
                    choice["logprobs"] = logprobs.render(o.token_ids[tokens:], o.logprobs[tokens:],
                                                         len(echo[i]) + chars)
                sent[index] = (max(chars, len(o.text)), len(o.token_ids))
                if o.finish_reason is not None:
                    finished.add(index)
                    completion_tokens += len(o.token_ids)
                yield sse({**base, "choices": [choice]})
        if include_usage:
            yield sse({**base, "choices": [],
                       "usage": usage(sum(len(p) for p in ids), completion_tokens)})
    except Exception as error:  # the engine failed or the server is stopping: say so, then end
        message, status = stream_error(error)
        yield sse_error(message, status)
    finally:
        await merged.aclose()
    yield SSE_DONE
