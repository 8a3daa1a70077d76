"""Phase-5 demo: the OpenAI API in front of the engine, called with the official client.

    python phase5_server/demos/openai_client_demo.py

Starts the server on a free localhost port (in this process, a background thread), then asks
one chat question without streaming, streams a completion token by token, shows an
OpenAI-style error for a bad request, and prints a few Prometheus metrics.
"""

import time

import httpx
from openai import BadRequestError, OpenAI

from phase5_server.testing import serve_in_thread


def main() -> None:
    print("starting the server (loads the embedded SmolLM2 model)...")
    with serve_in_thread() as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="unused")
        model = client.models.list().data[0].id
        print(f"serving {model!r} at {server.url}\n")

        reply = client.chat.completions.create(
            model=model, temperature=0, max_tokens=40,
            messages=[{"role": "user", "content": "What is the capital of France?"}])
        print(f"chat: {reply.choices[0].message.content!r}  usage: {reply.usage}\n")

        print("streamed completion: ", end="", flush=True)
        start, first = time.perf_counter(), None
        for chunk in client.completions.create(model=model, prompt="Once upon a time,",
                                               max_tokens=32, temperature=0, stream=True):
            first = first or time.perf_counter()
            print(chunk.choices[0].text, end="", flush=True)
        print(f"\n(time to first token {1000 * (first - start):.0f} ms)\n")

        try:
            client.completions.create(model=model, prompt="hi", max_tokens=-5)
        except BadRequestError as error:
            print(f"bad request -> HTTP {error.status_code}: {error.body}\n")

        metrics = httpx.get(server.url + "/metrics", trust_env=False).text.splitlines()
        wanted = ("vllm:num_requests_running", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                  "vllm:time_to_first_token_seconds_count", "vllm:kv_cache_usage_perc")
        print("metrics:\n" + "\n".join(line for line in metrics if line.startswith(wanted)))
        server.wait_idle()
        free, total = server.free_blocks()
        print(f"\nKV blocks free after the demo: {free}/{total}")


if __name__ == "__main__":
    main()
