"""``lightvllm serve --distributed-executor-backend grpc``, the server of the Kubernetes
deployment, as real processes on loopback: three ``lightvllm worker`` processes (SmolLM2 at
TP=3: 9 heads, 3 KV heads), the server in a subprocess (its engine core in another), and the
official ``openai`` client. Its greedy completion, plain and streamed, is the in-process
engine's; a killed worker turns requests into OpenAI-style errors and /health unhealthy within
seconds, not a hang; stopping the server ends the live workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

pytest.importorskip("grpc", reason="the optional extra phase4-distributed[grpc]")
openai = pytest.importorskip("openai")

from phase3_scheduling import LLM, SamplingParams  # noqa: E402
from phase4_distributed.grpc.local import local_workers  # noqa: E402
from phase5_server.testing import free_port  # noqa: E402

PROMPT = "The three primary colours are"
TP = 3
MAX_TOKENS = 8
KV_GIB = "0.05"


def reference_text(model_dir: str) -> str:
    llm = LLM(model_dir, kv_cache_gib=float(KV_GIB))
    try:
        params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        return llm.generate([PROMPT], params, use_tqdm=False)[0].outputs[0].text
    finally:
        llm.engine.shutdown()


def wait_ready(url: str, proc: subprocess.Popen, log_path, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        if _health_status(url) == 200:
            return
        time.sleep(0.5)
    pytest.fail(f"serve was not ready within {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")


def _health_status(url: str) -> int | None:
    """/health's status, or None while the server does not accept connections yet."""
    try:
        return httpx.get(url + "/health", timeout=2, trust_env=False).status_code
    except httpx.HTTPError:
        return None


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_on_a_grpc_worker_answers_the_openai_client(smollm2_dir, tmp_path):
    want = reference_text(str(smollm2_dir))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with local_workers(TP) as (addresses, workers):
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "lightvllm.cli", "serve", str(smollm2_dir),
                 "--port", str(port), "--device", "cpu", "--kv-cache-gib", KV_GIB,
                 "--distributed-executor-backend", "grpc", "--tensor-parallel-size", str(TP),
                 "--worker-addresses", ",".join(addresses)],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_ready(url, server, log_path)
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused",
                                   http_client=httpx.Client(trust_env=False))
            model = client.models.list().data[0].id
            args = dict(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                        extra_body={"ignore_eos": True})
            done = client.completions.create(**args)
            assert done.choices[0].text == want
            assert done.usage.completion_tokens == MAX_TOKENS
            streamed = "".join(chunk.choices[0].text
                               for chunk in client.completions.create(stream=True, **args)
                               if chunk.choices)
            assert streamed == want
            assert_a_dead_worker_is_reported(url, client, args, workers[-1])
        finally:
            stop(server)
        # uvicorn re-raises SIGTERM after its graceful shutdown, so the status may be -SIGTERM
        assert server.returncode in (0, -signal.SIGTERM), log_path.read_text()[-3000:]


def assert_a_dead_worker_is_reported(url: str, client, args: dict,
                                     worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    start = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client.with_options(max_retries=0, timeout=30).completions.create(**args)
    assert caught.value.status_code >= 500 and caught.value.body["code"], caught.value.body
    while httpx.get(url + "/health", timeout=5, trust_env=False).status_code == 200:
        assert time.monotonic() - start < 10, "/health stayed 200 after a worker died"
        time.sleep(0.2)
    assert time.monotonic() - start < 30
