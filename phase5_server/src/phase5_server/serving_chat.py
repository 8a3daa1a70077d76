"""``POST /v1/chat/completions``: messages through the model's chat template, streamed or not."""

from __future__ import annotations

from typing import AsyncGenerator

from .errors import APIError, sse_error
from .protocol import ChatCompletionRequest, ChatMessage
from .serving_engine import (SSE_DONE, ServerState, clamp, encode_prompt, final_outputs, generate,
                             merge, new_id, now, sampling_params, sse, stream_error, token_text,
                             top_entries, usage)


async def chat_prompt_ids(state: ServerState, messages: list[ChatMessage],
                          add_generation_prompt: bool) -> list[int]:
    """The prompt token ids of a conversation (system/user/assistant; developer counts as
    system), rendered and tokenized off the event loop. Message contents are encoded as plain
    text, so special-token text a user writes cannot open a turn of another role."""
    tok = state.tokenizer
    if tok is None or not tok.chat_template:
        raise APIError("this model has no chat template: use /v1/completions", 400,
                       param="messages")
    plain = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
             for m in messages]
    try:
        return await state.off_loop(tok.encode_chat, plain, add_generation_prompt)
    except Exception as error:  # the template refused the conversation (e.g. role order)
        raise APIError(f"the chat template refused these messages: {error}", 400,
                       param="messages") from None


class _Logprobs:
    def __init__(self, state: ServerState, k: int):
        self.state, self.k = state, k

    def _item(self, tid: int, logprob: float) -> dict:
        text = token_text(self.state, tid)
        return {"token": text, "logprob": clamp(logprob), "bytes": list(text.encode("utf-8"))}

    def render(self, token_ids: list[int], entries: list[dict]) -> dict:
        content = []
        for tid, entry in zip(token_ids, entries):
            item = self._item(tid, entry[tid].logprob)
            item["top_logprobs"] = [self._item(t, lp) for t, lp in top_entries(entry, self.k)]
            content.append(item)
        return {"content": content}


async def create_chat_completion(state: ServerState, req: ChatCompletionRequest, raw_request=None):
    state.check_model(req.model)
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError("top_logprobs needs logprobs=true", 400, param="top_logprobs")
    ids = await encode_prompt(state, await chat_prompt_ids(state, req.messages,
                                                           req.add_generation_prompt), "messages")
    max_tokens = req.max_completion_tokens or req.max_tokens
    k = (req.top_logprobs or 0) if req.logprobs else None
    params = sampling_params(req, max_tokens, k, len(ids), state)
    state.admit(req.n)
    cid, created = new_id("chatcmpl"), now()
    stream = generate(state, ids, params, cid)
    logprobs = _Logprobs(state, k) if k is not None else None
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _stream(state, req, cid, created, stream, len(ids), logprobs, include_usage)
    final = (await final_outputs(state, [stream], raw_request))[0]
    choices = [{"index": o.index, "message": {"role": "assistant", "content": o.text},
                "logprobs": logprobs.render(o.token_ids, o.logprobs) if logprobs else None,
                "finish_reason": o.finish_reason, "stop_reason": o.stop_reason}
               for o in final.outputs]
    completion_tokens = sum(len(o.token_ids) for o in final.outputs)
    return {"id": cid, "object": "chat.completion", "created": created, "model": state.model_name,
            "choices": choices, "usage": usage(len(ids), completion_tokens)}


async def _stream(state: ServerState, req: ChatCompletionRequest, cid: str, created: int, stream,
                  prompt_tokens: int, logprobs: _Logprobs | None,
                  include_usage: bool) -> AsyncGenerator[bytes, None]:
    base = {"id": cid, "object": "chat.completion.chunk", "created": created,
            "model": state.model_name}
    for index in range(req.n):  # the role comes first, before any token
        role = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None}
        yield sse({**base, "choices": [role]})
    sent: dict[int, tuple[int, int]] = {}
    finished: set[int] = set()
    completion_tokens = 0
    merged = merge([stream])
    try:
        async for _, out in merged:
            for o in out.outputs:
                if o.index in finished:
                    continue
                chars, tokens = sent.get(o.index, (0, 0))
                if len(o.token_ids) <= tokens and o.finish_reason is None:
                    continue
                text = o.text[chars:] if len(o.text) > chars else ""
                choice = {"index": o.index, "delta": {"content": text} if text else {},
                          "logprobs": None, "finish_reason": o.finish_reason}
                if logprobs is not None:
                    choice["logprobs"] = logprobs.render(o.token_ids[tokens:], o.logprobs[tokens:])
                if o.finish_reason is not None:
                    choice["stop_reason"] = o.stop_reason
                    finished.add(o.index)
                    completion_tokens += len(o.token_ids)
                sent[o.index] = (max(chars, len(o.text)), len(o.token_ids))
                yield sse({**base, "choices": [choice]})
        if include_usage:
            yield sse({**base, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
    except Exception as error:
        message, status = stream_error(error)
        yield sse_error(message, status)
    finally:
        await merged.aclose()
    yield SSE_DONE
