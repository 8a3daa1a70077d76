"""``lightvllm bench serve`` counts right: against the stub server of
``benchmarks/client_capacity.py`` (a subprocess, stopped by its PID), which sends exactly
``max_tokens`` one-token chunks per request, the client's completed count, token counts and number
of ITL samples are exact, and its TTFT/TPOT/ITL percentiles are the definitions applied to its
own per-request timings (numpy's linear percentiles as the reference). Nothing is timed."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from phase5_server.cli.bench_serve import make_prompts, parse_args, send_all, sse_lines, summarize

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "client_capacity.py"


@pytest.fixture(scope="module")
def stub_url():
    proc = subprocess.Popen([sys.executable, str(BENCH), "stub", "--loop", "asyncio"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("stub listening on port"), line
        yield f"http://127.0.0.1:{int(line.split()[-1])}"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _send(url: str, num_prompts: int, chunks: int, input_len: int = 24, extra: tuple = ()):
    args = parse_args(["--base-url", url, "--model", "stub", "--num-prompts", str(num_prompts),
                       "--input-len", str(input_len), "--output-len", str(chunks), *extra])
    prompts = make_prompts(args, random.Random(args.seed))
    results, duration = asyncio.run(send_all(args, prompts, args.request_rate[0], "stub", {}))
    return results, summarize(results, duration, args.request_rate[0], args.max_concurrency)


def _reference(values: list[float]) -> tuple[float, float, float]:
    ms = 1e3 * np.asarray(values)
    return float(ms.mean()), float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


@pytest.mark.parametrize("style", ["ours", "vllm", "spaced"])
def test_counts_are_exact(stub_url, style):
    n, chunks = 24, 37
    results, row = _send(f"{stub_url}/style={style}", n, chunks)
    assert (row["completed"], row["failed"], row["num_prompts"]) == (n, 0, n)
    assert row["output_tokens"] == n * chunks
    assert row["input_tokens"] == n * 24  # the stub reports len(prompt) prompt tokens
    for r in results:
        assert r.ok and r.error == ""
        assert (r.output_tokens, r.prompt_tokens, len(r.itl)) == (chunks, 24, chunks - 1)
        assert 0 < r.ttft <= r.latency
        assert min(r.itl) >= 0 and r.ttft + sum(r.itl) <= r.latency
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in results]
    itl = [x for r in results for x in r.itl]
    for name, values in (("ttft_ms", [r.ttft for r in results]), ("tpot_ms", tpot), ("itl_ms", itl)):
        mean, p50, p99 = _reference(values)
        assert row[f"{name}_mean"] == pytest.approx(mean)
        assert row[f"{name}_p50"] == pytest.approx(p50)
        assert row[f"{name}_p99"] == pytest.approx(p99)


def test_capped_concurrency_and_poisson_arrivals(stub_url):
    results, row = _send(stub_url, 20, 9, extra=("--max-concurrency", "3", "--request-rate", "500"))
    assert (row["completed"], row["output_tokens"], row["max_concurrency"]) == (20, 180, 3)
    assert sum(len(r.itl) for r in results) == 20 * 8


def test_one_token_has_no_itl_and_no_tpot(stub_url):
    results, row = _send(stub_url, 5, 1)
    assert row["completed"] == 5 and row["output_tokens"] == 5
    assert all(r.itl == [] for r in results)
    assert np.isnan(row["tpot_ms_p50"]) and np.isnan(row["itl_ms_p50"])


def test_without_usage_chunk_counts_chunks(stub_url):
    results, row = _send(f"{stub_url}/usage=0", 6, 11)
    assert (row["completed"], row["output_tokens"], row["input_tokens"]) == (6, 66, 0)
    assert all(len(r.itl) == 10 for r in results)


def test_line_separator_inside_a_token_stays_in_its_line(stub_url):
    # vLLM (pydantic) writes U+2028 and U+0085 raw; SSE lines end only at CR, LF or CRLF
    text = urllib.parse.quote("a\u2028b\u0085c")
    results, row = _send(f"{stub_url}/style=vllm/text={text}", 4, 7)
    assert (row["completed"], row["failed"], row["output_tokens"]) == (4, 0, 28), row.get("first_error")


def test_error_event_fails_the_request(stub_url):
    results, row = _send(f"{stub_url}/error_after=3", 4, 10)
    assert (row["completed"], row["failed"]) == (0, 4)
    assert row["first_error"] == "stub error"
    assert all(not r.ok and r.error == "stub error" for r in results)


def test_http_error_status_fails_the_request(stub_url):
    results, row = _send(f"{stub_url}/no/such/path", 3, 5)
    assert (row["completed"], row["failed"]) == (0, 3)
    assert row["first_error"].startswith("HTTP 404")


def test_sse_lines_split_at_cr_lf_crlf_only_across_any_reads():
    rng = random.Random(0)
    pieces = [b"data: {\"t\":\"a\xe2\x80\xa8b\xc2\x85c\x0bd\"}", b"\r\n", b"\n", b"\r", b"data: [DONE]",
              b": comment", b"x" * 50]
    for _ in range(200):
        stream = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 12)))
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(0, 6))))
        reads = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]

        async def collect():
            async def source():
                for read in reads:
                    yield read
            return [line async for line in sse_lines(source())]

        expected = [line for line in re.split(rb"\r\n|\r|\n", stream) if line]
        assert [line for line in asyncio.run(collect()) if line] == expected, reads


def test_rows_carry_the_engine_steps_of_our_server_and_none_from_others(stub_url, tiny_server):
    """Against our server each rate's row says which engine steps ran in its window (read from
    /metrics after the warm-up and at the end): three prompts one at a time are three mixed steps
    carrying their 8 tokens each, then 5 decode steps each; a server without the counters (the
    stub, like vLLM's) gives rows without them."""
    from phase5_server.cli.bench_serve import run_rate

    args = parse_args(["--base-url", tiny_server.url, "--num-prompts", "3", "--input-len", "8",
                       "--output-len", "6", "--max-concurrency", "1", "--vocab-size", "1000"])
    prompts = make_prompts(args, random.Random(args.seed))
    row = asyncio.run(run_rate(args, prompts, args.request_rate[0], "tiny", {}))
    assert row["completed"] == 3 and row["output_tokens"] == 18
    steps = row["steps"]
    assert (steps["mixed_steps"], steps["decode_steps"]) == (3, 15)
    assert steps["mixed_prompt_tokens_per_step"] == 8 and steps["decode_rows_per_step"] == 1
    assert steps["busy_ms_per_step"] > 0
    stub_args = parse_args(["--base-url", stub_url, "--model", "stub", "--num-prompts", "2",
                            "--output-len", "3"])
    stub_row = asyncio.run(run_rate(stub_args, make_prompts(stub_args, random.Random(0)),
                                    stub_args.request_rate[0], "stub", {}))
    assert stub_row["completed"] == 2 and "steps" not in stub_row


def test_each_rate_sends_prompts_the_server_has_not_cached(tiny_server):
    """Two rates in one run: the second's prompts are new to the server, so every one of its
    prompt tokens is prefilled (a repeated prompt would come from the prefix cache: its step
    would carry one token, not 32). Also the warm-up shares no block with the first prompt."""
    from phase5_server.cli.bench_serve import run

    rows = run(["--base-url", tiny_server.url, "--model", "tiny", "--num-prompts", "3",
                "--input-len", "32", "--output-len", "3", "--max-concurrency", "1",
                "--vocab-size", "1000", "--seed", "7", "--request-rate", "inf", "inf"])
    for row in rows:
        assert row["completed"] == 3
        assert row["steps"]["mixed_steps"] == 3
        assert row["steps"]["mixed_prompt_tokens_per_step"] == 32
