"""Can ``lightvllm bench serve`` keep up with the server it measures? (issue 8)

A stub OpenAI-style server (raw asyncio HTTP/1.1, no framework, in a subprocess) answers
``POST /v1/completions`` with pre-encoded SSE chunks shaped like ours: ``max_tokens`` chunks of
one token each, a usage chunk, ``data: [DONE]``, with chunked transfer encoding on a keep-alive
connection. Two stub modes, picked per request by a prefix of the URL path
(``/interval=0.0256/v1/completions``):

* flood (interval 0): every chunk is one write followed by a yield to the loop, as fast as the
  stub can go; what the client consumes per second is then its own ceiling.
* paced (interval > 0): each stream sends a chunk every ``interval`` s on an absolute schedule, so
  the stub offers ``concurrency / interval`` chunks/s; a client that keeps up reports ITL ~ the
  interval and TPOT ~ the interval.

For each configuration the stub's own rate is measured first with a raw-socket reader (reads
bytes, counts events with ``bytes.count``, parses nothing), then ``bench_serve.run_rate`` (the
client's own measurement code, unchanged) runs against it with ``--request-rate inf``; with
``--clients`` several modules offering bench_serve's ``parse_args``/``make_prompts``/``run_rate``
(e.g. an older bench_serve saved from git) run one after the other on each configuration.

    python phase5_server/benchmarks/client_capacity.py               # the default table
    python phase5_server/benchmarks/client_capacity.py --configs 256x500 --rates 0 10000
    python phase5_server/benchmarks/client_capacity.py stub --port 0  # only the stub
    git show 7222952:phase5_server/src/phase5_server/cli/bench_serve.py > /tmp/old/bench_serve_httpx.py
    PYTHONPATH=/tmp/old:$PYTHONPATH python phase5_server/benchmarks/client_capacity.py \
        --clients bench_serve_httpx phase5_server.cli.bench_serve       # before / after aiohttp

Chunks/s consumed by the client = chunks received by completed requests / the run's duration;
client CPU = this process's CPU time during the run / the run's duration.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import urllib.parse

# --- the stub server ---------------------------------------------------------------------------

STYLES = ("ours", "vllm", "spaced")


def _frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (chunked transfer encoding)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(payload: dict, style: str) -> bytes:
    separators = (", ", ": ") if style == "spaced" else (",", ":")
    text = json.dumps(payload, separators=separators, ensure_ascii=style != "vllm")
    return _frame(b"data: " + text.encode() + b"\n\n")


def stream_parts(rid: str, n: int, prompt_tokens: int, style: str = "ours", text: str = "x",
                 error_after: int | None = None, usage: bool = True) -> tuple[bytes, bytes, bytes]:
    """(token chunk, last token chunk, tail: usage + [DONE] + end of body), all pre-encoded.

    ``style``: ``ours`` (our server's compact JSON, no usage key in token chunks), ``vllm``
    (every chunk also carries ``"usage": null`` and non-ASCII text is sent as UTF-8, not
    escaped, as pydantic writes it), ``spaced`` (json.dumps' default separators). With
    ``error_after`` the tail is an error event (the stream sends only that many token chunks);
    ``usage=False`` leaves the usage chunk out.
    """
    base = {"id": rid, "object": "text_completion", "created": 1764633600, "model": "stub"}
    extra = {"usage": None} if style == "vllm" else {}

    def token(finish):
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
        return _event({**base, "choices": [choice], **extra}, style)

    if error_after is not None:
        tail = _event({"error": {"message": "stub error", "type": "InternalServerError", "param": None,
                                 "code": 500}}, "spaced")
    elif usage:
        counts = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
        tail = _event({**base, "choices": [], "usage": counts}, style)
    else:
        tail = b""
    return token(None), token("length"), tail + _frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"


SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")


def _json_response(status: str, payload: dict) -> bytes:
    body = json.dumps(payload).encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            .encode() + body)


def _options(path: str) -> tuple[str, dict]:
    """``/interval=0.01/style=vllm/v1/completions`` -> (``/v1/completions``, {interval, style}).

    Options: ``interval`` (s between chunks, 0 = flood), ``style`` (see ``stream_parts``),
    ``text`` (each token's text, %-encoded), ``error_after`` (chunks before an error event),
    ``usage=0`` (no usage chunk)."""
    opts, parts = {}, path.split("?")[0].strip("/").split("/")
    while parts and "=" in parts[0]:
        key, value = parts.pop(0).split("=", 1)
        opts[key] = urllib.parse.unquote(value)
    return "/" + "/".join(parts), opts


async def _stream(writer: asyncio.StreamWriter, body: dict, opts: dict, rid: str) -> None:
    n = max(1, int(body.get("max_tokens") or 16))
    prompt = body.get("prompt")
    prompt_tokens = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
    error_after = int(opts["error_after"]) if "error_after" in opts else None
    count = n if error_after is None else min(n, error_after)
    chunk, last, tail = stream_parts(rid, n, prompt_tokens, opts.get("style", "ours"), opts.get("text", "x"),
                                     error_after, opts.get("usage", "1") != "0")
    interval = float(opts.get("interval", 0))
    loop = asyncio.get_running_loop()
    writer.write(SSE_HEAD)
    start = loop.time()
    for i in range(count):
        if interval > 0:
            delay = start + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        writer.write(last if i == n - 1 else chunk)
        await writer.drain()
        if interval <= 0:
            await asyncio.sleep(0)  # let the other streams write too
    writer.write(tail)
    await writer.drain()


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: list[int]) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in
                       (line.split(":", 1) for line in lines[1:] if ":" in line)}
            length = int(headers.get("content-length", 0))
            raw = await reader.readexactly(length) if length else b""
            route, opts = _options(path)
            if method == "GET" and route == "/health":  # as a real server's, for run_b4.py
                writer.write(_json_response("200 OK", {}))
            elif method == "GET" and route == "/v1/models":
                writer.write(_json_response("200 OK", {"object": "list", "data": [
                    {"id": "stub", "object": "model", "owned_by": "stub"}]}))
            elif method == "POST" and route == "/v1/completions":
                counter[0] += 1
                await _stream(writer, json.loads(raw or b"{}"), opts, f"cmpl-{counter[0]}")
            else:
                writer.write(_json_response("404 Not Found", {"error": {"message": "not found"}}))
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass  # the client went away, or the stub is stopping
    finally:
        writer.close()


async def serve_stub(host: str, port: int) -> None:
    counter = [0]
    server = await asyncio.start_server(lambda r, w: _handle(r, w, counter), host, port, backlog=1024)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"stub listening on port {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


def stub_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="client_capacity.py stub")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    try:
        asyncio.run(serve_stub(args.host, args.port))
    except KeyboardInterrupt:
        pass


class Stub:
    """The stub in a subprocess; ``url`` once it listens; stopped by its PID on exit."""

    def __init__(self, loop: str = "uvloop"):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "stub", "--loop", loop],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("stub listening on port"):
            self.stop()
            raise RuntimeError(f"the stub did not start: {line!r}")
        self.port = int(line.split()[-1])
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> Stub:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --- the stub's own limit: a raw-socket reader -------------------------------------------------

async def _raw_one(port: int, path: str, n: int, prompt_len: int) -> list[float]:
    """One request read as raw bytes: the arrival time of each of its ``n`` token chunks (the time
    of the read that brought it in; events are counted with ``bytes.count``, nothing is parsed)."""
    body = json.dumps({"prompt": list(range(100, 100 + prompt_len)), "max_tokens": n, "stream": True}).encode()
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                 f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
    times, tail = [start], b""
    while True:
        data = await reader.read(1 << 18)
        if not data:
            break
        now = time.perf_counter()
        joined = tail + data  # an event marker may straddle two reads
        times += [now] * (joined.count(b"data: ") - tail.count(b"data: "))
        tail = joined[-5:]
        if tail == b"0\r\n\r\n":
            break
    writer.close()
    return times[:n + 1]  # start, then the n token chunks (usage and [DONE] dropped)


async def raw_rate(port: int, path: str, concurrency: int, n: int, prompt_len: int = 32) -> dict:
    """What the stub delivers to readers that only read bytes (``concurrency`` x ``n`` chunks):
    chunks/s and the same TTFT/ITL/TPOT definitions as the client's, from the read times."""
    from phase5_server.cli.bench_serve import percentiles

    start = time.perf_counter()
    runs = await asyncio.gather(*(_raw_one(port, path, n, prompt_len) for _ in range(concurrency)))
    duration = time.perf_counter() - start
    row = {"chunks_s": concurrency * n / duration}
    row.update(percentiles([t[1] - t[0] for t in runs], "ttft_ms"))
    row.update(percentiles([(t[-1] - t[1]) / (n - 1) for t in runs if n > 1], "tpot_ms"))
    row.update(percentiles([b - a for t in runs for a, b in zip(t[1:], t[2:])], "itl_ms"))
    return row


# --- the benchmark -----------------------------------------------------------------------------

def loadavg() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def measure(stub: Stub, concurrency: int, chunks: int, interval: float, clients: list[str],
            prompt_len: int = 32) -> list[dict]:
    """The raw reader, then each client module (its parse_args, make_prompts, run_rate) in turn."""
    prefix = f"/interval={interval}"
    raw = asyncio.run(raw_rate(stub.port, prefix + "/v1/completions", concurrency, chunks, prompt_len))
    return [_measure_client(importlib.import_module(name), name, stub.url + prefix, raw, concurrency,
                            chunks, interval, prompt_len) for name in clients]


def _measure_client(module, name: str, url: str, raw: dict, concurrency: int, chunks: int,
                    interval: float, prompt_len: int) -> dict:
    make_prompts, parse_args, run_rate = module.make_prompts, module.parse_args, module.run_rate
    args = parse_args(["--base-url", url, "--model", "stub", "--num-prompts", str(concurrency),
                       "--input-len", str(prompt_len), "--output-len", str(chunks), "--prompt-type", "ids",
                       "--request-rate", "inf"])
    prompts = make_prompts(args, random.Random(args.seed))
    before, cpu = loadavg(), time.process_time()
    row = asyncio.run(run_rate(args, prompts, float("inf"), "stub", {}))
    cpu = time.process_time() - cpu  # this process: the client and its warm-up request
    offered = concurrency / interval if interval > 0 else math.inf
    return {"client": name, "concurrency": concurrency, "chunks_per_request": chunks, "interval_ms": 1e3 * interval,
            "offered_chunks_s": offered, "stub_raw_chunks_s": raw["chunks_s"],
            "raw_itl_ms_p50": raw["itl_ms_p50"], "raw_itl_ms_p99": raw["itl_ms_p99"],
            "raw_tpot_ms_p50": raw["tpot_ms_p50"], "raw_ttft_ms_p50": raw["ttft_ms_p50"],
            "client_chunks_s": row["output_tokens"] / row["duration_s"],
            "client_cpu_pct": 100 * cpu / row["duration_s"], "completed": row["completed"],
            "failed": row["failed"], "duration_s": row["duration_s"], "output_tokens": row["output_tokens"],
            "ttft_ms_p50": row["ttft_ms_p50"], "ttft_ms_p99": row["ttft_ms_p99"],
            "tpot_ms_p50": row["tpot_ms_p50"], "tpot_ms_p99": row["tpot_ms_p99"],
            "itl_ms_p50": row["itl_ms_p50"], "itl_ms_p99": row["itl_ms_p99"],
            "loadavg_before": before, "loadavg_after": loadavg()}


def render(rows: list[dict]) -> str:
    head = ("| client | concurrency x chunks | stub offers (chunks/s) | stub limit, raw reader (chunks/s) "
            "| client (chunks/s) | client / stub | client CPU (% of a core) | TTFT p50 (ms) client / raw | ITL p50 (ms) client / raw "
            "| ITL p99 (ms) client / raw | TPOT p50 (ms) client / raw | completed | load avg |")
    lines = [head, "|" + "---|" * (head.count(" | ") + 1)]
    for r in rows:
        offered = f"{r['offered_chunks_s']:,.0f}" if math.isfinite(r["offered_chunks_s"]) else "flood"
        lines.append(
            f"| {r['client'].rsplit('.', 1)[-1]} | {r['concurrency']} x {r['chunks_per_request']} | {offered} | {r['stub_raw_chunks_s']:,.0f} "
            f"| {r['client_chunks_s']:,.0f} | {r['client_chunks_s'] / r['stub_raw_chunks_s']:.2f} "
            f"| {r['client_cpu_pct']:.0f} "
            f"| {r['ttft_ms_p50']:.1f} / {r['raw_ttft_ms_p50']:.1f} "
            f"| {r['itl_ms_p50']:.2f} / {r['raw_itl_ms_p50']:.2f} | {r['itl_ms_p99']:.2f} / {r['raw_itl_ms_p99']:.2f} "
            f"| {r['tpot_ms_p50']:.2f} / {r['raw_tpot_ms_p50']:.2f} "
            f"| {r['completed']}/{r['concurrency']} | {r['loadavg_before']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["stub"]:
        return stub_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["64x1000", "256x500", "512x200"],
                        help="CONCURRENCYxCHUNKS per request, e.g. 256x500")
    parser.add_argument("--rates", nargs="+", type=float, default=[0, 10000, 20000],
                        help="chunks/s the stub offers in all (each stream: one every concurrency/rate "
                             "s); 0 = flood")
    parser.add_argument("--clients", nargs="+", default=["phase5_server.cli.bench_serve"],
                        help="modules with bench_serve's parse_args, make_prompts and run_rate, measured "
                             "one after the other on each configuration (e.g. an older bench_serve)")
    parser.add_argument("--stub-loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    from tqdm.auto import tqdm

    configs = [tuple(int(x) for x in c.lower().split("x")) for c in args.configs]
    jobs = [(c, n, c / rate if rate > 0 else 0.0) for c, n in configs for rate in args.rates]
    import httpx

    print(f"load average before: {loadavg()} ({os.cpu_count()} CPUs); python {sys.version.split()[0]}, "
          f"httpx {httpx.__version__}", flush=True)
    rows = []
    with Stub(args.stub_loop) as stub:
        for c, n, interval in tqdm(jobs, desc="configs", unit="run"):
            for row in measure(stub, c, n, interval, args.clients):
                rows.append(row)
                tqdm.write(f"{row['client']}: {c} x {n}, interval {1e3 * interval:.2f} ms: client "
                           f"{row['client_chunks_s']:,.0f} chunks/s, stub {row['stub_raw_chunks_s']:,.0f}, "
                           f"load {row['loadavg_after']}")
    print(render(rows))
    print(f"load average after: {loadavg()}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
