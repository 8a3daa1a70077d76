"""What one streamed chunk's JSON costs the API process: the standard library's ``json.dumps``
(compact separators, then encoded to UTF-8 bytes, as the server did) against msgspec's encoder (what
``serving_engine.sse`` uses now), on a completion chunk of one token, and on a chat chunk with
non-ASCII text. µs per event, best of 5 timeit repeats.

    python phase5_server/benchmarks/sse_encode.py
"""

from __future__ import annotations

import json
import timeit

import msgspec

from phase5_server.serving_engine import sse

PAYLOADS = {
    "completion chunk": {"id": "cmpl-3f0c9a1e2b7d4c58", "object": "text_completion",
                         "created": 1796600000, "model": "llama-3.1-8b",
                         "choices": [{"index": 0, "text": " hello", "logprobs": None,
                                      "finish_reason": None, "stop_reason": None}]},
    "chat chunk, non-ASCII": {"id": "chatcmpl-3f0c9a1e2b7d4c58", "object": "chat.completion.chunk",
                              "created": 1796600000, "model": "llama-3.1-8b",
                              "choices": [{"index": 0, "delta": {"content": " café 日本"},
                                           "logprobs": None, "finish_reason": None}]},
}


def stdlib_event(payload: dict) -> bytes:
    return ("data: " + json.dumps(payload, separators=(",", ":")) + "\n\n").encode()


def per_call_us(fn, payload: dict, number: int = 100_000) -> float:
    return min(timeit.repeat(lambda: fn(payload), number=number, repeat=5)) / number * 1e6


def main() -> None:
    print("| payload | json.dumps + encode, µs | msgspec (sse), µs | ratio |")
    print("|---|---|---|---|")
    for name, payload in PAYLOADS.items():
        assert json.loads(sse(payload)[6:-2]) == json.loads(stdlib_event(payload)[6:-2])
        old, new = per_call_us(stdlib_event, payload), per_call_us(sse, payload)
        print(f"| {name} | {old:.2f} | {new:.2f} | {new / old:.2f}× |")
    print(f"msgspec {msgspec.__version__}")


if __name__ == "__main__":
    main()
