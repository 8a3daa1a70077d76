"""``lightvllm chat``: a terminal chat with the embedded model, streaming each reply as it is made.

Runs the engine in-process (``AsyncLLMEngine``); ``--url`` talks to a running ``lightvllm serve``
(or any OpenAI-compatible server) instead. Commands: ``/reset`` clears the history, ``/quit``
(or Ctrl-D) leaves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid

from phase3_scheduling.cli_args import add_engine_args, engine_args


async def _reply_local(engine, messages: list[dict], args) -> str:
    from phase3_scheduling import SamplingParams

    prompt = engine.tokenizer.encode_chat(messages, True)
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens)
    shown = ""
    async for out in engine.generate(prompt, params, uuid.uuid4().hex):
        text = out.outputs[0].text
        print(text[len(shown):], end="", flush=True)
        shown = text
    return shown


def _reply_remote(client, messages: list[dict], args) -> str:
    body = {"model": args.model_name, "messages": messages, "stream": True,
            "temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens}
    if body["model"] is None:
        body.pop("model")
    shown = ""
    with client.stream("POST", args.url.rstrip("/") + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(response.read().decode())
        for line in response.iter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                payload = json.loads(line[5:])
                if "error" in payload:
                    raise RuntimeError(payload["error"]["message"])
                for choice in payload.get("choices", []):
                    piece = choice.get("delta", {}).get("content") or ""
                    print(piece, end="", flush=True)
                    shown += piece
    return shown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lightvllm chat", description=__doc__)
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--url", default=None, help="chat with this server instead of a local engine")
    parser.add_argument("--model-name", default=None, help="model name to send with --url")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--system", default=None, help="a system message")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    add_engine_args(parser)
    args = parser.parse_args(argv)
    engine = client = None
    if args.url:
        import httpx

        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        client = httpx.Client(timeout=None, headers=headers, trust_env=False)
    else:
        from phase3_scheduling import AsyncLLMEngine

        engine = AsyncLLMEngine.from_engine_args(engine_args(args))
    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)
    print("LightvLLM chat: /reset clears the history, /quit or Ctrl-D leaves.")
    try:
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                print()
                break
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            if line == "/reset":
                messages = list(start)
                continue
            messages.append({"role": "user", "content": line})
            print("assistant> ", end="", flush=True)
            try:
                if engine is not None:
                    reply = asyncio.run(_reply_local(engine, messages, args))
                else:
                    reply = _reply_remote(client, messages, args)
            except KeyboardInterrupt:
                reply = ""
            print()
            messages.append({"role": "assistant", "content": reply})
    finally:
        if engine is not None:
            engine.shutdown()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
