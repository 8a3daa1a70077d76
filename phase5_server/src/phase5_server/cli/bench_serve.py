"""``lightvllm bench serve``: online-serving benchmark against any OpenAI-compatible server (B4).

Requests go to streaming ``/v1/completions`` with random token-id prompts (works without a
tokenizer; vLLM accepts them too) or text prompts, arriving as a Poisson process at each
``--request-rate`` (``inf``: all at once), optionally capped at ``--max-concurrency`` in flight.
Per request it measures TTFT (first token chunk), ITL (gaps between chunks) and TPOT
((latency - TTFT) / (output tokens - 1)), with output tokens from the final usage chunk.
Streams are read with aiohttp (as vLLM's client does), fast enough that at 10,000 chunks/s the
figures are the server's (``benchmarks/client_capacity.py`` measures the client against a stub).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import aiohttp
import httpx

from phase3_scheduling.step_timeline import StepCounters, describe_window, summarize_window

from ..metrics import parse_step_counters

WORDS = ("the of and to in is was for on that with as by at from his her an which are be this "
         "or had not but were they all one their what so up out if about who get would make "
         "time when can more like no just him know take people into year your good some could "
         "them see other than then now look only come its over think also back after use two "
         "how our work first well way even new want because any these give day most us").split()


@dataclass
class Result:
    ok: bool = False
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    error: str = ""


def make_prompts(args, rng: random.Random) -> list:
    if args.prompts_file:
        with open(args.prompts_file) as handle:
            lines = [line.rstrip("\n") for line in handle if line.strip()]
        prompts = [json.loads(line)["prompt"] if line.lstrip().startswith("{") else line for line in lines]
        return [prompts[i % len(prompts)] for i in range(args.num_prompts)]
    if args.prompt_type == "text":
        return [" ".join(rng.choice(WORDS) for _ in range(args.input_len)) for _ in range(args.num_prompts)]
    low, high = 100, args.vocab_size - 1
    return [[rng.randrange(low, high) for _ in range(args.input_len)] for _ in range(args.num_prompts)]


def rate_rng(seed: int, index: int) -> random.Random:
    """The prompts of the ``index``-th rate of a run: the first from ``seed`` itself, each later
    one from its own stream, so no rate repeats another's prompts (a server with prefix caching
    would otherwise prefill them from its cache: vLLM's and ours keep it on by default)."""
    return random.Random(seed if index == 0 else f"{seed}:{index}")


def warm_up_prompt(prompt):
    """A prompt of the same length that shares no leading block with ``prompt`` (reversed)."""
    return prompt[::-1] if isinstance(prompt, list) else " ".join(reversed(prompt.split()))


async def sse_lines(chunks) -> AsyncIterator[bytes]:
    """The lines of a byte stream, split only at CR, LF and CRLF as SSE says (``str.splitlines``,
    which httpx's ``aiter_lines`` uses, also splits at U+2028, U+0085 and others that JSON may
    carry raw inside a string, as vLLM's pydantic encoder writes them)."""
    pending = b""
    async for data in chunks:
        if pending:
            data = pending + data
        lines = data.splitlines()  # on bytes: CR, LF, CRLF only
        # a CRLF split over two reads gives one more empty line: harmless, as empty lines only end events
        pending = b"" if data[-1:] in (b"\n", b"\r") else lines.pop()
        for line in lines:
            yield line
    if pending:
        yield pending


async def one_request(session: aiohttp.ClientSession, url: str, model: str | None, prompt,
                      output_len: int, headers: dict) -> Result:
    body = {"prompt": prompt, "max_tokens": output_len, "temperature": 0.0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    if model:
        body["model"] = model
    res, chunks = Result(), 0
    start = last = time.perf_counter()
    try:
        async with session.post(url, json=body, headers=headers) as response:
            if response.status != 200:
                res.error = f"HTTP {response.status}: {(await response.read())[:200]!r}"
                return res
            async for line in sse_lines(response.content.iter_any()):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                payload = json.loads(data)
                if "error" in payload:
                    res.error = str(payload["error"].get("message"))
                    return res
                now = time.perf_counter()
                if payload.get("choices"):
                    if chunks == 0:
                        res.ttft = now - start
                    else:
                        res.itl.append(now - last)
                    chunks += 1
                    last = now
                if payload.get("usage"):
                    res.output_tokens = payload["usage"]["completion_tokens"]
                    res.prompt_tokens = payload["usage"]["prompt_tokens"]
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:  # ValueError: bad JSON
        res.error = f"{type(error).__name__}: {error}"
        return res
    res.latency = time.perf_counter() - start
    res.output_tokens = res.output_tokens or chunks
    res.ok = chunks > 0
    return res


def percentiles(values: list[float], name: str) -> dict:
    if not values:
        return {f"{name}_{k}": float("nan") for k in ("mean", "p50", "p90", "p99")}
    ordered = sorted(values)

    def pct(q: float) -> float:
        pos = q * (len(ordered) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return 1e3 * (ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))

    return {f"{name}_mean": 1e3 * sum(ordered) / len(ordered), f"{name}_p50": pct(0.5),
            f"{name}_p90": pct(0.9), f"{name}_p99": pct(0.99)}


async def read_step_counters(session: aiohttp.ClientSession, base_url: str,
                             headers: dict) -> StepCounters | None:
    """The server's engine-step counters from ``/metrics`` (None from a server without them)."""
    try:
        async with session.get(base_url.rstrip("/") + "/metrics", headers=headers) as response:
            if response.status != 200:
                return None
            return parse_step_counters(await response.text())
    except aiohttp.ClientError:
        return None


async def send_all(args, prompts: list, rate: float, model: str | None, headers: dict,
                   readings: list | None = None) -> tuple[list[Result], float]:
    """One request per prompt at ``rate`` (after a warm-up request): the results, the duration.
    ``readings`` (a list) gets the server's step counters after the warm-up and at the end."""
    url = args.base_url.rstrip("/") + "/v1/completions"
    rng = random.Random(args.seed + 1)
    cap = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
    # aiohttp, not httpx: httpx spends 0.7-1.4 ms of client CPU per request and ~14 us per chunk, so
    # 256 requests sent at once read TTFT p50 325 ms from a stub whose first chunks left after 29 ms
    # (benchmarks/client_capacity.py, docs/phase5.md); no connection limit, no proxies from the env
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                     trust_env=False) as session:
        await one_request(session, url, model, warm_up_prompt(prompts[0]), 4, headers)  # warm-up
        if readings is not None:
            readings.append(await read_step_counters(session, args.base_url, headers))

        async def limited(prompt):
            if cap is None:
                return await one_request(session, url, model, prompt, args.output_len, headers)
            async with cap:
                return await one_request(session, url, model, prompt, args.output_len, headers)

        tasks = []
        start = time.perf_counter()
        for prompt in prompts:
            tasks.append(asyncio.create_task(limited(prompt)))
            if math.isfinite(rate):
                await asyncio.sleep(rng.expovariate(rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
        if readings is not None:
            readings.append(await read_step_counters(session, args.base_url, headers))
    return results, duration


def summarize(results: list[Result], duration: float, rate: float, max_concurrency: int | None) -> dict:
    done = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in done)
    in_tokens = sum(r.prompt_tokens for r in done)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1]
    row = {"request_rate": rate if math.isfinite(rate) else "inf", "max_concurrency": max_concurrency,
           "num_prompts": len(results), "completed": len(done), "failed": len(results) - len(done),
           "duration_s": duration, "input_tokens": in_tokens, "output_tokens": out_tokens,
           "request_throughput": len(done) / duration, "output_throughput": out_tokens / duration,
           "total_token_throughput": (in_tokens + out_tokens) / duration}
    row.update(percentiles([r.ttft for r in done], "ttft_ms"))
    row.update(percentiles(tpot, "tpot_ms"))
    row.update(percentiles([x for r in done for x in r.itl], "itl_ms"))
    row.update(percentiles([r.latency for r in done], "e2el_ms"))
    errors = [r.error for r in results if not r.ok]
    if errors:
        row["first_error"] = errors[0]
    return row


async def run_rate(args, prompts: list, rate: float, model: str | None, headers: dict) -> dict:
    readings: list[StepCounters | None] = []
    results, duration = await send_all(args, prompts, rate, model, headers, readings)
    row = summarize(results, duration, rate, args.max_concurrency)
    before, after = readings
    if before is not None and after is not None:  # our server: where the steps' time went
        row["steps"] = summarize_window(before, after)
    return row


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lightvllm bench serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="model name (default: the server's first)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--num-prompts", type=int, default=500)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--request-rate", type=float, nargs="+", default=[float("inf")],
                        help="requests per second, Poisson arrivals; inf sends all at once")
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--prompt-type", choices=["ids", "text"], default="ids")
    parser.add_argument("--prompts-file", default=None, help="text lines or JSONL with a 'prompt' field")
    parser.add_argument("--vocab-size", type=int, default=32000, help="random token ids lie in [100, this)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workload", default="custom")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    return parser.parse_args(argv)


COLUMNS = ["request_rate", "completed", "failed", "duration_s", "request_throughput",
           "output_throughput", "ttft_ms_mean", "ttft_ms_p50", "ttft_ms_p99", "tpot_ms_mean",
           "tpot_ms_p50", "tpot_ms_p99", "itl_ms_p50", "itl_ms_p99"]


def table(rows: list[dict]) -> str:
    def cell(v) -> str:
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    model = args.model
    if model is None:
        listing = httpx.get(args.base_url.rstrip("/") + "/v1/models", headers=headers, trust_env=False,
                            timeout=30).json()
        model = listing["data"][0]["id"]
    rows = []
    for index, rate in enumerate(args.request_rate):
        prompts = make_prompts(args, rate_rng(args.seed, index))
        row = asyncio.run(run_rate(args, prompts, rate, model, headers))
        row.update(workload=args.workload, model=model, input_len=args.input_len,
                   output_len=args.output_len, base_url=args.base_url)
        rows.append(row)
        print(f"rate {row['request_rate']}: {row['completed']}/{row['num_prompts']} done in "
              f"{row['duration_s']:.1f} s, {row['output_throughput']:.1f} output tok/s, "
              f"TTFT p50 {row['ttft_ms_p50']:.1f} ms, TPOT p50 {row['tpot_ms_p50']:.1f} ms", flush=True)
        if "steps" in row:
            print("  " + describe_window(row["steps"]), flush=True)
    print(table(rows))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=2)
    return rows


def main(argv: list[str] | None = None) -> None:
    rows = run(argv)
    if any(r["failed"] for r in rows):
        raise SystemExit(f"{sum(r['failed'] for r in rows)} requests failed: "
                         f"{next(r['first_error'] for r in rows if r.get('first_error'))}")


if __name__ == "__main__":
    main()
