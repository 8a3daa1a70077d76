"""B4 (online serving) end to end: start ``lightvllm serve`` in a subprocess, wait for /health,
run ``bench serve`` at each request rate, stop the server with SIGINT, write the rows as JSON.

    python phase5_server/benchmarks/run_b4.py --preset cpu --out docs/results/cpu_b4_serve.json
    python phase5_server/benchmarks/run_b4.py --preset h200 --out h200_b4_serve.json

Presets: ``h100`` is DESIGN.md's B4 (Llama-3.1-8B shape, dummy bf16 weights, 500 requests of 512
random token ids / 128 out, Poisson 4, 16, inf req/s); ``cpu`` is the small CPU variant against
the embedded SmolLM2 (fp32, 64 requests of 128 / 32, rates 1, 4, inf); ``cpu-api`` serves a
2-layer, 64-wide Llama with random weights and SmolLM2's tokenizer, so that the engine's steps
take milliseconds and the API process (HTTP, detokenization, SSE) and the client carry the load:
the preset that measures the event loop and ``gc.freeze`` (``--serve-args '--event-loop
asyncio'``, ``LIGHTVLLM_GC_FREEZE=0``).

``--engine vllm`` serves the preset's model shape with ``vllm serve`` and vLLM's own defaults
instead (random bf16 weights, no tokenizer), driven by the same client with the same prompts: the
same-run baseline (``scripts/gpu_session.sh`` sections ``vb4``, ``vb4mid``, ``vb4low``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import httpx

# the 8B shape with our defaults (max_num_seqs: 1024 on an 80 GB GPU since the thirteenth session;
# --serve-args "--max-num-seqs 256" gives the earlier runs' setting)
SERVE_8B = ["--load-format", "dummy", "--hf-config", "llama-3.1-8b", "--dtype", "bfloat16",
            "--max-model-len", "2048"]
PRESETS = {
    "h100": dict(
        serve=SERVE_8B,
        bench=["--num-prompts", "500", "--input-len", "512", "--output-len", "128",
               "--request-rate", "4", "16", "inf", "--vocab-size", "128000", "--workload", "B4"]),
    "h200": dict(  # issue 8: 300 requests at 4 req/s, 500 at 16 and unlimited
        serve=SERVE_8B,
        bench=["--input-len", "512", "--output-len", "128", "--vocab-size", "128000",
               "--workload", "B4"],
        runs=[["--num-prompts", "300", "--request-rate", "4"],
              ["--num-prompts", "500", "--request-rate", "16", "inf"]]),
    "h200-4rps": dict(  # the 4 req/s run of h200 alone (an A/B of the decode step in one call)
        serve=SERVE_8B,
        bench=["--input-len", "512", "--output-len", "128", "--vocab-size", "128000",
               "--workload", "B4"],
        runs=[["--num-prompts", "300", "--request-rate", "4"]]),
    "h200-16rps": dict(  # the 16 req/s run of h200 alone (decode steps of ~16 rows: an A/B)
        serve=SERVE_8B,
        bench=["--input-len", "512", "--output-len", "128", "--vocab-size", "128000",
               "--workload", "B4"],
        runs=[["--num-prompts", "500", "--request-rate", "16"]]),
    "h200-inf": dict(  # the unlimited run of h200 alone (500 requests at once: max_num_seqs A/B)
        serve=SERVE_8B,
        bench=["--input-len", "512", "--output-len", "128", "--vocab-size", "128000",
               "--workload", "B4"],
        runs=[["--num-prompts", "500", "--request-rate", "inf"]]),
    "cpu-api": dict(  # the API process's own load: a tiny model whose steps take milliseconds
        tiny=True,
        serve=["--dtype", "float32", "--max-num-seqs", "256", "--max-model-len", "512",
               "--kv-cache-gib", "0.5"],
        bench=["--input-len", "128", "--output-len", "128", "--workload", "B4-cpu-api"],
        runs=[["--num-prompts", "256", "--request-rate", "16"],
              ["--num-prompts", "512", "--request-rate", "inf"]]),  # one rate a call: CPU per rate
    "cpu": dict(
        serve=["--dtype", "float32", "--max-num-seqs", "64", "--max-model-len", "1024"],
        bench=["--num-prompts", "64", "--input-len", "128", "--output-len", "32",
               "--request-rate", "1", "4", "inf", "--workload", "B4-cpu-small"]),
}


def tiny_model_args(preset: dict) -> list[str]:
    """``--load-format dummy`` with the tiny Llama's config.json (written to a temporary file) and
    the embedded model's tokenizer, for a preset marked ``tiny``; else nothing."""
    if not preset.get("tiny"):
        return []
    from phase5_server.testing import TINY_LLAMA
    from shared.model_registry import resolve_model

    with tempfile.NamedTemporaryFile("w", suffix="-config.json", delete=False) as handle:
        json.dump(TINY_LLAMA, handle)
    return ["--load-format", "dummy", "--hf-config", handle.name, "--tokenizer",
            str(resolve_model())]


def vllm_server(preset: dict, args) -> tuple[str, list[str], list[str]]:
    """The same-run baseline: ``vllm serve`` with vLLM's own defaults on the preset's model shape
    (random bf16 weights, no tokenizer: the client sends token ids), plus ``--serve-args``."""
    if preset.get("tiny") or "--hf-config" not in preset["serve"]:
        raise SystemExit(f"--engine vllm takes a preset with a model shape (--hf-config), not {args.preset}")
    from phase3_scheduling.cli_args import hf_config

    from shared.bench import write_hf_model_dir

    shape = hf_config(preset["serve"][preset["serve"].index("--hf-config") + 1])
    model_dir = write_hf_model_dir(shape, tempfile.mkdtemp(prefix="b4-model-"))
    serve_args = [model_dir, "--load-format", "dummy", "--skip-tokenizer-init", "--dtype", "bfloat16",
                  "--seed", "0", *args.serve_args.split()]
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", *serve_args,
           "--port", str(args.port)]
    return "vllm serve", serve_args, cmd


def server_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of the API process and of its children (the engine
    core), read with psutil."""
    import psutil

    api = psutil.Process(pid)
    children = api.children(recursive=True)
    cpu = lambda p: sum(p.cpu_times()[:2])  # noqa: E731
    return {"api": cpu(api), "engine": sum(cpu(c) for c in children)}


def add_cpu_per_token(rows: list[dict], before: dict[str, float], after: dict[str, float]) -> None:
    """The CPU each server process spent during one bench serve call, as µs per output token;
    only when the call ran one rate (several rates in one call share the processes' time)."""
    if len(rows) != 1:
        return
    row = rows[0]
    for name in ("api", "engine"):
        spent = after[name] - before[name]
        row[f"{name}_cpu_s"] = spent
        row[f"{name}_cpu_us_per_token"] = 1e6 * spent / max(row.get("output_tokens", 0), 1)
    print(f"rate {row.get('request_rate')}: CPU per output token: API process "
          f"{row['api_cpu_us_per_token']:.0f} µs, engine process {row['engine_cpu_us_per_token']:.0f} µs",
          flush=True)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float, start: float) -> float:
    """Seconds from ``start`` (the server's launch) until /health answers 200; polled every
    0.1 s so that the figure is not rounded up by the polling."""
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/health", timeout=2, trust_env=False).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the server was not healthy after {timeout} s")


def startup_phases(url: str) -> dict[str, float]:
    """The engine's start-up timeline (``GET /startup``); empty if the server has none."""
    try:
        reply = httpx.get(url + "/startup", timeout=5, trust_env=False)
    except httpx.HTTPError:
        return {}
    return reply.json().get("phases", {}) if reply.status_code == 200 else {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", required=True)
    parser.add_argument("--server-log", default=None)
    parser.add_argument("--startup-timeout", type=float, default=600)
    parser.add_argument("--startup-only", action="store_true",
                        help="start the server, record its start-up time and phases, stop it")
    parser.add_argument("--no-engine-process", action="store_true",
                        help="serve with the engine in a thread of the API process")
    parser.add_argument("--engine", choices=["lightvllm", "vllm"], default="lightvllm",
                        help="vllm: serve the preset's model shape with vLLM's defaults instead "
                             "(the same-run baseline; vLLM must be importable)")
    parser.add_argument("--serve-args", default="",
                        help="more lightvllm serve options, one string (e.g. a same-run "
                             "baseline: '--no-async-scheduling --max-prefill-tokens-while-decoding 0')")
    parser.add_argument("--extra-bench", nargs=argparse.REMAINDER, default=[],
                        help="more bench serve options (after everything else)")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    url = f"http://127.0.0.1:{args.port}"
    log = open(args.server_log, "w") if args.server_log else None
    if args.engine == "vllm":
        name, serve_args, cmd = vllm_server(preset, args)
    else:
        name, serve_args = "lightvllm serve", [*preset["serve"], *tiny_model_args(preset),
                                              *args.serve_args.split()]
        cmd = [sys.executable, "-m", "lightvllm.cli", "serve", "--port", str(args.port), *serve_args,
               *(["--no-engine-process"] if args.no_engine_process else [])]
    print("server:", " ".join(cmd), flush=True)
    launched = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log or sys.stdout, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        startup = wait_healthy(url, proc, args.startup_timeout, launched)
        phases = startup_phases(url)
        timeline = ", ".join(f"{name} {seconds:.2f}" for name, seconds in phases.items())
        print(f"server healthy after {startup:.1f} s (start-up phases, s: {timeline or 'n/a'})",
              flush=True)
        if args.startup_only:
            with open(args.out, "w") as handle:
                json.dump({"server_startup_s": startup, "startup_phases_s": phases,
                           "server_cmd": name + " " + " ".join(serve_args),
                           "date": time.strftime("%Y-%m-%d")}, handle, indent=2)
            return
        from phase5_server.cli.bench_serve import run

        rows = []
        for index, extra in enumerate(preset.get("runs", [[]])):
            # each run its own prompts (bench serve varies them per rate within a run): none
            # comes from the prefix cache that an earlier run filled
            bench = ["--base-url", url, *preset["bench"], *extra, "--seed", str(1000 * index),
                     *args.extra_bench]
            print("bench: lightvllm bench serve", " ".join(bench), flush=True)
            before = server_cpu_seconds(proc.pid)
            new_rows = run(bench)
            add_cpu_per_token(new_rows, before, server_cpu_seconds(proc.pid))
            rows += new_rows
        from shared.bench import hardware

        for row in rows:
            row.update(server_startup_s=startup, startup_phases_s=phases, hardware=hardware(),
                       preset=args.preset,
                       engine=args.engine, server_cmd=name + " " + " ".join(serve_args),
                       date=time.strftime("%Y-%m-%d"))
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=2)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
