"""Server-sent events as the server writes them (msgspec's encoder on the hot path): each parses
back, with the standard library's json, to exactly the payload, non-ASCII text included."""

from __future__ import annotations

import json

import pytest

from phase5_server.errors import sse_error
from phase5_server.serving_engine import SSE_DONE, sse

TEXTS = [" hello", "café ☕ 日本語", 'quote " backslash \\ newline \n tab \t', "\u0000\u001f", "😀"]


@pytest.mark.parametrize("text", TEXTS)
def test_an_event_is_one_data_line_that_parses_back_to_its_payload(text):
    payload = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
               "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": None,
                            "stop_reason": None}]}
    event = sse(payload)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    body = event[len(b"data: "):-2]
    assert b"\n" not in body  # one line: a raw newline would end the event early
    assert json.loads(body.decode("utf-8")) == payload


def test_errors_and_done_are_events_too():
    error = sse_error("engine died", 503, "engine_unavailable")
    assert json.loads(error[len(b"data: "):-2])["error"]["code"] == "engine_unavailable"
    assert SSE_DONE == b"data: [DONE]\n\n"
